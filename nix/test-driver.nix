# For NixOS VMs (runNixOSTest nodes, `nixos-rebuild build-vm`): serve every shared directory of
# the VM — its view of the host's /nix/store, xchg and shared, and any
# virtualisation.sharedDirectories of the test — through vufsd, started next to QEMU with the
# driver's own (unprivileged) identity and --noatime=auto, so the guest's writable overlay on the
# root-owned store keeps working (docs/noatime.md).
#
#   defaults = { imports = [ vufsd.nixosModules.testDriver ]; virtualisation.vufsd.enable = true; };
#
# It fits both eras of nixpkgs' qemu-vm.nix (docs/nixos.md):
# - "virtiofsd" (nixpkgs from September 2026, PR #552774): qemu-vm.nix starts
#   `hostPkgs.virtiofsd` for each shared directory; the VM's host package set gets vufsd in
#   its place (nix/vm-scripts.nix's virtiofsdShim), with nixpkgs' arguments as they are.
# - "qemu" (before): qemu-vm.nix passes `-virtfs` to QEMU; QEMU becomes a wrapper that turns
#   each into a vufsd daemon and a vhost-user-fs device, and the guest mounts virtiofs.
# In both, guest memory is shared through virtualisation.qemu.enableSharedMemory where nixpkgs
# has it (a memory backend of our own otherwise), and every daemon ends with its VM.
{ config, lib, pkgs, options, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.virtualisation.vufsd;
  hostPkgs = cfg.hostPkgs;
  scripts = import ./vm-scripts.nix;

  qemuOptions = options.virtualisation.qemu;
  hasSharedMemoryOption = qemuOptions ? enableSharedMemory;
  # nixpkgs PR #563324 made enableSharedMemory default to "this VM's shares use virtiofsd";
  # before it the option was off by default (for the test driver's SSH backdoor), or absent.
  nixpkgsRunsVirtiofsd = hasSharedMemoryOption && qemuOptions.enableSharedMemory.default == true;
  hook = if cfg.hook == "auto" then (if nixpkgsRunsVirtiofsd then "virtiofsd" else "qemu") else cfg.hook;

  # Read-only with a long cache for the store (nothing else writes it while the VM runs), as
  # qemu-vm.nix mounts it with cache=loose over 9p.
  shareSettings = tag:
    if tag == "nix-store" then { cache = "always"; readonly = true; }
    else { cache = "auto"; readonly = false; };

  virtiofsd = import ./virtiofsd-shim.nix {
    inherit (hostPkgs) writeTextFile runtimeShell;
    vufsd = cfg.package;
    inherit (cfg) logLevel extraArgs;
  };

  wrapper = hostPkgs.writeShellScript "qemu-with-vufsd" (scripts.qemuWrapper {
    vufsd = "${cfg.package}/bin/vufsd";
    shares = lib.mapAttrs (tag: _: shareSettings tag) config.virtualisation.sharedDirectories;
    inherit (cfg) logLevel extraArgs squashIds;
    coreutils = "${hostPkgs.coreutils}";
  });

  # virtualisation.vufsd.qemuPackage with its QEMU binaries behind the wrapper.
  qemuWithVufsd = hostPkgs.runCommand "qemu-with-vufsd" { passthru = { inherit wrapper; }; } ''
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

  # Above a plain definition (the test framework sets virtualisation.qemu.package and
  # virtualisation.host.pkgs at normal priority), below mkForce (a user's choice wins).
  vufsdPriority = 90;
in
{
  options.virtualisation.vufsd = {
    enable = lib.mkEnableOption "serving the VM's shared directories (and the host's Nix store) through vufsd";
    package = mkOption {
      type = types.package;
      default = hostPkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "config.virtualisation.vufsd.hostPkgs.callPackage <vufsd/nix/package.nix> { }";
      description = "vufsd for the host (the flake's nixosModules.testDriver sets its own build).";
    };
    hostPkgs = mkOption {
      type = types.raw;
      default = pkgs;
      defaultText = lib.literalExpression "pkgs";
      description = ''
        The package set of the machine QEMU runs on, which vufsd is built from and whose
        `virtiofsd` it replaces. runNixOSTest gives its nodes the host's package set as `pkgs`,
        so the default is right there; set it when the VM's host and guest systems differ.
      '';
    };
    hook = mkOption {
      type = types.enum [ "auto" "virtiofsd" "qemu" ];
      default = "auto";
      description = ''
        How vufsd takes over the VM's shared directories. `virtiofsd`: nixpkgs' qemu-vm.nix
        runs virtiofsd for them (September 2026 and later), and the host package set's
        virtiofsd becomes vufsd. `qemu`: qemu-vm.nix passes `-virtfs` (9p) to QEMU, and
        QEMU is wrapped to start vufsd instead. `auto` picks `virtiofsd` when
        virtualisation.qemu.enableSharedMemory defaults to on (nixpkgs PR #563324), else `qemu`.
      '';
    };
    qemuPackage = mkOption {
      type = types.package;
      default = hostPkgs.qemu_test;
      defaultText = lib.literalExpression "config.virtualisation.vufsd.hostPkgs.qemu_test";
      description = ''
        With hook `qemu`: the QEMU that runs the VM (virtualisation.qemu.package becomes a
        wrapper around it; set this instead of virtualisation.qemu.package).
      '';
    };
    squashIds = mkOption {
      type = types.bool;
      default = true;
      description = ''
        With hook `qemu`: show every file as root's to the guest, as nixpkgs' qemu_test did for
        9p shares (the Nix build sandbox shows the store as an unmapped user's), and, when vufsd
        runs unprivileged, let the guest's chown succeed without changing the owner, as 9p's
        security_model=none did. With hook `virtiofsd`, nixpkgs' own arguments decide.
      '';
    };
    logLevel = mkOption {
      type = types.enum [ "error" "warn" "info" "debug" "trace" ];
      default = "warn";
      description = "vufsd's --log-level (its log goes to the test log); nixpkgs' own --log-level wins.";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More vufsd options for every share (no whitespace or quotes inside one).";
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions = [
        {
          assertion = hostPkgs.stdenv.hostPlatform.isLinux;
          message = "virtualisation.vufsd: vufsd runs on Linux hosts only (nixpkgs shares a Darwin host's directories over 9p).";
        }
        {
          assertion = (config.virtualisation.host.pkgs.virtiofsd.outPath or "") == virtiofsd.outPath;
          message = "virtualisation.vufsd: virtualisation.host.pkgs is set with a priority above vufsd's (mkForce?), so its virtiofsd is not vufsd; set virtualisation.vufsd.hostPkgs instead.";
        }
        {
          assertion = hook != "qemu" || config.virtualisation.qemu.package.outPath == qemuWithVufsd.outPath;
          message = "virtualisation.vufsd: virtualisation.qemu.package is set with a priority above vufsd's (mkForce?), so QEMU would serve the shares over 9p; set virtualisation.vufsd.qemuPackage instead.";
        }
      ];

      # Both eras: whatever in qemu-vm.nix asks the host for virtiofsd gets vufsd. A plain
      # attribute update, not an overlay: nothing else in the host set needs to change.
      virtualisation.host.pkgs = lib.mkOverride vufsdPriority (hostPkgs // { inherit virtiofsd; });
    }

    # vhost-user: the daemons read and write guest memory directly.
    (lib.optionalAttrs hasSharedMemoryOption {
      virtualisation.qemu.enableSharedMemory = true;
    })

    (lib.mkIf (hook == "qemu") {
      virtualisation.qemu.package = lib.mkOverride vufsdPriority qemuWithVufsd;
      virtualisation.qemu.options = lib.optionals (!hasSharedMemoryOption) [
        "-object memory-backend-memfd,id=vufsd-mem,size=${toString config.virtualisation.memorySize}M,share=on"
        "-machine memory-backend=vufsd-mem"
      ];
      # The guest mounts the same tags as virtiofs. Options are 9p's in qemu-vm.nix; virtiofs
      # takes none of them.
      virtualisation.fileSystems = lib.mapAttrs' (tag: share:
        lib.nameValuePair share.target {
          fsType = lib.mkForce "virtiofs";
          options = lib.mkForce [ "defaults" ];
        }
      ) config.virtualisation.sharedDirectories;
      boot.initrd.kernelModules = [ "virtiofs" ];
    })
  ]);
}
