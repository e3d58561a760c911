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
