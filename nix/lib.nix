# How a share's settings become vufsd's command line, with builtins only (no nixpkgs), so that
# tests can evaluate it with a bare nix-instantiate. Everything follows
# contrib/share-options.json, the definition contrib/systemd/vufsd@.service is rendered from:
# the NixOS module writes `envFile share` as /etc/vufsd/NAME.conf for that unit, and the test
# driver runs vufsd with `args share` directly. tests/units.rs checks that both give the same
# command line.
let
  definition = builtins.fromJSON (builtins.readFile ../contrib/share-options.json);
  settings = definition.settings;

  valueOf = s: share: if builtins.hasAttr s.name share then share.${s.name} else s.default;

  # A setting's value as text.
  render = s: v: if s.type == "bool" then (if v then "true" else "false") else toString v;

  # Extra arguments travel through systemd's `$EXTRA_ARGS` word splitting: keep them plain.
  plainArg = a:
    builtins.match ".*[[:space:]\"'\\\\].*" a == null;

  checkedExtra = share:
    let extra = valueOf { name = "extraArgs"; default = [ ]; } share;
    in if builtins.all plainArg extra then extra
       else throw "vufsd: extraArgs must not contain whitespace, quotes or backslashes: ${builtins.toJSON extra}";

  # 'single quotes' keep every character verbatim in an EnvironmentFile (systemd.exec(5)).
  envQuote = v:
    if builtins.match ".*'.*" v == null then "'${v}'"
    else throw "vufsd: a share setting may not contain a single quote: ${v}";
in
rec {
  inherit settings;

  # Why `name` cannot name a share (null when it can). It becomes the systemd instance of
  # vufsd@NAME.service / vufsd@NAME.socket and the file /etc/vufsd/NAME.conf: systemd takes
  # ASCII letters, digits and ":_.\-" in unit names (and "\" only as an escape); vufsd takes
  # the plain subset, starting with a letter or digit, so that a name never needs escaping
  # and never looks like an option or a hidden file.
  shareNameProblem = name:
    if builtins.match "[A-Za-z0-9][A-Za-z0-9_.-]*" name == null then
      "services.vufsd.shares.${builtins.toJSON name}: a share name becomes the systemd unit vufsd@NAME.service: use ASCII letters, digits, '_', '.' and '-', starting with a letter or digit"
    else if builtins.stringLength name > 241 then
      "services.vufsd.shares.${builtins.toJSON name}: the name is longer than the 241 characters a unit name vufsd@NAME.service leaves"
    else null;

  # Why `path` cannot be a unix socket's path (null when it can): sun_path holds 108 bytes
  # with the terminating NUL.
  socketPathProblem = name: path:
    if builtins.stringLength path > 107 then
      "services.vufsd.shares.${name}.socketPath: ${path} is ${toString (builtins.stringLength path)} bytes; a unix socket path has at most 107"
    else null;

  # vufsd's arguments for a share (sharedDir required; the rest default as in
  # share-options.json), without the socket: systemd passes it, the test driver adds it.
  args = share:
    builtins.concatLists (map (s:
      if s.type == "args" then checkedExtra share
      else if s.type == "fixed" then [ "${s.flag}=${s.value}" ]
      else [ "${s.flag}=${render s (valueOf s share)}" ]
    ) settings);

  # The same share as the EnvironmentFile vufsd@.service reads (/etc/vufsd/NAME.conf).
  envFile = share:
    builtins.concatStringsSep "" (map (s:
      let v = valueOf s share; in
      if s.type == "args"
      then "${s.env}=${envQuote (builtins.concatStringsSep " " (checkedExtra share))}\n"
      else "${s.env}=${envQuote (render s v)}\n"
    ) (builtins.filter (s: s.type != "fixed") settings));
}
