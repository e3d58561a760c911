# The scripts that start vufsd next to a NixOS VM's QEMU, as text. Builtins only (like
# lib.nix), so that tests run exactly this text with a bare nix-instantiate
# (tests/vm_nixos.rs); nix/test-driver.nix wraps it in derivations.
#
# Every daemon started here gets --exit-with-parent: the script that starts it goes on to exec
# QEMU, so QEMU becomes the daemon's parent, and the daemon ends with the VM — also when QEMU
# fails before it connects (docs/nixos.md).
let
  vufsdLib = import ./lib.nix;

  # One shell word, verbatim.
  quote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
  words = args: builtins.concatStringsSep " " (map quote args);

  lifelineArgs = logLevel: [ "--exit-with-parent" "--log-level=${logLevel}" ];
in
{
  inherit quote;

  # nixpkgs from September 2026 on (PR #552774): qemu-vm.nix runs `virtiofsd ARGS &` for each
  # shared directory, then execs QEMU. This is that `virtiofsd`: vufsd, taking nixpkgs'
  # arguments as they are. Ours come first, so that nixpkgs' own win where both set one.
  virtiofsdShim = { vufsd, logLevel ? "warn", extraArgs ? [ ] }: ''
    # virtiofsd as nixpkgs' qemu-vm.nix starts it for a VM's shared directory, served by vufsd.
    exec ${quote vufsd} ${words (lifelineArgs logLevel ++ extraArgs)} "$@"
  '';

  # nixpkgs before that: QEMU gets `-virtfs local,path=DIR,...,mount_tag=TAG` for each shared
  # directory. This wraps QEMU (`qemu-with-vufsd QEMU ARGS...`): each -virtfs of a share in
  # `shares` (tag -> { cache, readonly }) becomes a vufsd daemon on ./vufsd-TAG.sock and a
  # vhost-user-fs device with the same tag; everything else goes to QEMU as it is.
  #
  # `squashIds`: show every file as root's to the guest, as qemu_test (nixpkgs' QEMU for tests,
  # patched for this) did over 9p, where the Nix build sandbox shows the store as an unmapped
  # user's; and, when vufsd runs unprivileged, let the guest's chown succeed without changing the
  # owner, as 9p's security_model=none did.
  # `coreutils`: where `id` and `sleep` are (empty: from PATH).
  qemuWrapper = { vufsd, shares, logLevel ? "warn", extraArgs ? [ ], squashIds ? true, coreutils ? "" }:
    let
      bin = name: if coreutils == "" then name else "${coreutils}/bin/${name}";
      daemonArgs = tag: share:
        let
          args = vufsdLib.args {
            sharedDir = "@DIR@";
            inherit (share) cache readonly;
            noatime = "auto";
            extraArgs = lifelineArgs logLevel ++ extraArgs;
          };
        in
        builtins.concatStringsSep " "
          (map (a: if a == "--shared-dir=@DIR@" then ''--shared-dir="$dir"'' else quote a) args);
      arms = builtins.concatStringsSep "" (map (tag: ''
          ${quote tag}) set -- ${daemonArgs tag shares.${tag}} ;;
      '') (builtins.attrNames shares));
      known = builtins.concatStringsSep "|" (map quote (builtins.attrNames shares));
    in
    ''
      # QEMU for a NixOS VM that shares directories over 9p: the shares below come from vufsd.
      set -eu
      qemu=$1
      shift

      ids=()
      ${if squashIds then ''
        ids+=(--translate-uid=squash-host:0:0:4294967295 --translate-gid=squash-host:0:0:4294967295)
        if [ "$(${bin "id"} -u)" != 0 ]; then
          ids+=(--translate-uid="squash-guest:0:$(${bin "id"} -u):4294967295")
          ids+=(--translate-gid="squash-guest:0:$(${bin "id"} -g):4294967295")
        fi
      '' else ""}
      args=()
      pids=()
      tags=()

      # start TAG DIR: a daemon for the share, and its device for QEMU.
      start() {
        local tag=$1 dir=$2
        case $tag in
      ${arms}  esac
        rm -f "vufsd-$tag.sock"
        ${quote vufsd} --socket-path="vufsd-$tag.sock" "$@" ''${ids[@]+"''${ids[@]}"} &
        pids+=("$!")
        tags+=("$tag")
        args+=(-chardev "socket,id=vufsd-$tag,path=vufsd-$tag.sock")
        args+=(-device "vhost-user-fs-pci,chardev=vufsd-$tag,tag=$tag")
      }

      # field SPEC KEY: the value of KEY= in a -virtfs option list.
      field() {
        local IFS=, item items
        read -r -a items <<< "$1"
        for item in "''${items[@]}"; do
          case $item in "$2"=*) printf '%s\n' "''${item#*=}"; return 0 ;; esac
        done
        return 1
      }

      while [ $# -gt 0 ]; do
        if [ "$1" = -virtfs ] && [ $# -ge 2 ]; then
          tag=$(field "$2" mount_tag || true)
          case $tag in
            ${known})
              dir=$(field "$2" path) || { echo "qemu-with-vufsd: no path= in -virtfs $2" >&2; exit 1; }
              start "$tag" "$dir"
              shift 2
              continue ;;
          esac
        fi
        args+=("$1")
        shift
      done

      # QEMU connects at start: wait until every daemon listens (or give up on one that died).
      for i in ''${!tags[@]}; do
        n=0
        until [ -S "vufsd-''${tags[i]}.sock" ]; do
          if ! kill -0 "''${pids[i]}" 2>/dev/null || [ "$n" -ge 500 ]; then
            echo "qemu-with-vufsd: vufsd for share ''${tags[i]} did not start (its messages are above)" >&2
            exit 1
          fi
          n=$((n + 1))
          ${bin "sleep"} 0.02
        done
      done

      exec "$qemu" "''${args[@]}"
    '';
}
