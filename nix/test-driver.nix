# For NixOS VM tests (runNixOSTest): serve each test VM's shared directories — its view of the
# host's /nix/store, xchg and shared, and any virtualisation.sharedDirectories of the test —
# through vufsd instead of QEMU's built-in 9p server. The daemons run beside QEMU with the
# driver's (unprivileged) identity and --noatime=auto, so the guest's writable overlay on the
# root-owned store keeps working (docs/noatime.md).
#
#   defaults = { imports = [ vufsd.nixosModules.testDriver ]; virtualisation.vufsd.enable = true; };
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.virtualisation.vufsd;
  hostPkgs = config.virtualisation.host.pkgs;
  vufsdLib = import ./lib.nix;
  shares = config.virtualisation.sharedDirectories;

  # Sockets go in the VM's state directory, the start script's working directory (short
  # relative paths: unix socket paths are limited to 108 bytes).
  socketOf = tag: "vufsd-${tag}.sock";

  # The same command line the systemd unit runs (nix/lib.nix). `source` is shell text in
  # qemu-vm.nix (e.g. "$TMPDIR"/xchg), so it is expanded by the wrapper's shell, as there.
  daemonArgs = tag: share:
    [ "--socket-path=${socketOf tag}" ]
    ++ vufsdLib.args {
      sharedDir = share.source;
      cache = if tag == "nix-store" then "always" else "auto";
      readonly = tag == "nix-store";
      noatime = "auto";
      extraArgs = [ "--log-level=${cfg.logLevel}" ] ++ cfg.extraArgs;
    };

  startDaemons = lib.concatStrings (lib.mapAttrsToList (tag: share: ''
    rm -f ${socketOf tag}
    ${cfg.package}/bin/vufsd ${lib.concatStringsSep " " (daemonArgs tag share)} &
  '') shares);

  waitForSockets = lib.concatMapStrings (tag: ''
    for _ in $(seq 1 500); do [ -S ${socketOf tag} ] && break; sleep 0.02; done
    [ -S ${socketOf tag} ] || { echo "vufsd for share ${tag} did not start" >&2; exit 1; }
  '') (lib.attrNames shares);

  # QEMU that first starts the daemons and drops qemu-vm.nix's -virtfs arguments (the shares
  # arrive as vhost-user-fs devices instead, see virtualisation.qemu.options below).
  wrapper = hostPkgs.writeShellScript "qemu-with-vufsd" ''
    set -eu
    export TMPDIR="''${TMPDIR:-$PWD}"
    real="$1"; shift
    args=()
    while [ $# -gt 0 ]; do
      if [ "$1" = -virtfs ] && [ $# -ge 2 ]; then shift 2; continue; fi
      args+=("$1"); shift
    done
    ${startDaemons}
    ${waitForSockets}
    exec "$real" "''${args[@]}"
  '';

  qemuWithVufsd = hostPkgs.runCommand "qemu-with-vufsd" { } ''
    mkdir -p $out/bin
    for f in ${cfg.qemuPackage}/bin/*; do
      name=$(basename "$f")
      case "$name" in
        qemu-kvm|qemu-system-*)
          printf '#!%s\nexec %s %s "$@"\n' ${hostPkgs.runtimeShell} ${wrapper} "$f" > $out/bin/$name
          chmod +x $out/bin/$name ;;
        *) ln -s "$f" $out/bin/$name ;;
      esac
    done
    ln -s ${cfg.qemuPackage}/share $out/share
  '';
in
{
  options.virtualisation.vufsd = {
    enable = lib.mkEnableOption "serving the VM's shared directories (and host Nix store) through vufsd";
    package = mkOption {
      type = types.package;
      description = "vufsd for the host (the flake's nixosModules.testDriver sets it).";
    };
    qemuPackage = mkOption {
      type = types.package;
      default = hostPkgs.qemu_test;
      defaultText = lib.literalExpression "config.virtualisation.host.pkgs.qemu_test";
      description = "The QEMU that runs the VM (virtualisation.qemu.package becomes a wrapper).";
    };
    logLevel = mkOption {
      type = types.enum [ "error" "warn" "info" "debug" "trace" ];
      default = "warn";
      description = "vufsd's --log-level (its log goes to the test log).";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More vufsd options for every share.";
    };
  };

  config = lib.mkIf cfg.enable {
    virtualisation.qemu.package = qemuWithVufsd;
    virtualisation.qemu.options =
      [
        # vhost-user: the daemons read and write guest memory directly.
        "-object memory-backend-memfd,id=vufsd-mem,size=${toString config.virtualisation.memorySize}M,share=on"
        "-machine memory-backend=vufsd-mem"
      ]
      ++ lib.concatLists (lib.mapAttrsToList (tag: _: [
        "-chardev socket,id=vufsd-${tag},path=${socketOf tag}"
        "-device vhost-user-fs-pci,chardev=vufsd-${tag},tag=${tag}"
      ]) shares);

    virtualisation.fileSystems = lib.mapAttrs' (tag: share:
      lib.nameValuePair share.target {
        fsType = lib.mkForce "virtiofs";
        options = lib.mkForce [ ];
      }
    ) shares;

    boot.initrd.kernelModules = [ "virtiofs" ];
  };
}
