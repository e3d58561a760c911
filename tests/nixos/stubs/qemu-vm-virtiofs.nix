# RECONSTRUCTION of nixpkgs nixos/modules/virtualisation/qemu-vm.nix after PR #552774
# ("nixos/qemu-vm: 9p -> virtiofs", merged September 2026) and PR #563324 ("virtiofsd requires
# shared memory"): the same parts as the kit's 9p-era excerpt (../shared/nixos-eval/stubs/
# qemu-vm-excerpt.nix, transcribed from nixpkgs 00008e8e), changed the way those PRs and the
# code that uses them describe. The post-merge text itself was not available here. What is
# known, and modelled:
#   - `useVirtiofs = hostPkgs.stdenv.hostPlatform.isLinux;` (qemu-vm.nix line 27 at nixpkgs
#     44a91898, quoted in downstream code); on other hosts the -virtfs path stays (PR #562444);
#   - startVM runs `hostPkgs.virtiofsd` for every shared directory before it execs QEMU
#     ("the generated runner calls hostPkgs.virtiofsd for every share it creates"), and QEMU
#     gets a vhost-user-fs device per share; the guest mounts them as virtiofs;
#   - `virtualisation.qemu.enableSharedMemory` defaults to useVirtiofs (#563324; before it,
#     an mkEnableOption for the test driver's SSH backdoor) and adds the shared memfd backend.
# What is guessed: virtiofsd's arguments (vmTools' own, ../virtiofsd-args.nix), the socket
# names, the wait for the sockets, the virtiofs mount options. A test against a real nixpkgs
# (VUFSD_NIXPKGS, tests/nixos/README.md) checks the module against the real text instead.
{ config, lib, pkgs, options, ... }:
with lib;
let
  cfg = config.virtualisation;
  qemu = cfg.qemu.package;
  hostPkgs = cfg.host.pkgs;
  useVirtiofs = hostPkgs.stdenv.hostPlatform.isLinux;
  virtiofsdArgs = import ../virtiofsd-args.nix;
  qemuBinary = qemuPkg:
    { x86_64-linux = "${qemuPkg}/bin/qemu-system-x86_64 -machine accel=kvm:tcg -cpu max"; }.${pkgs.stdenv.hostPlatform.system} or "${qemuPkg}/bin/qemu-kvm";
  shares = config.virtualisation.sharedDirectories;
  startVM = ''
    #! ${hostPkgs.runtimeShell}

    export PATH=${makeBinPath [ hostPkgs.coreutils ]}''${PATH:+:}$PATH

    set -e

    # Create a directory for storing temporary data of the running VM.
    if [ -z "$TMPDIR" ] || [ -z "$USE_TMPDIR" ]; then
        TMPDIR=$(mktemp -d nix-vm.XXXXXXXXXX --tmpdir)
    fi

    # Create a directory for exchanging data with the VM.
    mkdir -p "$TMPDIR/xchg"

    cd "$TMPDIR"

    ${optionalString useVirtiofs (concatStrings (mapAttrsToList (tag: share: ''
      ${hostPkgs.virtiofsd}/bin/virtiofsd ${virtiofsdArgs { inherit tag; inherit (share) source; }} &
    '') shares))}
    ${optionalString useVirtiofs (concatStrings (mapAttrsToList (tag: _: ''
      until [ -e virtiofsd-${tag}.sock ]; do sleep 0.1; done
    '') shares))}

    # Start QEMU.
    exec ${qemuBinary qemu} \
        -name ${config.system.name} \
        -m ${toString config.virtualisation.memorySize} \
        -smp ${toString config.virtualisation.cores} \
        -device virtio-rng-pci \
        ${concatStringsSep " " config.virtualisation.qemu.networkingOptions} \
        ${concatStringsSep " \\\n    " (mapAttrsToList (tag: share:
          if useVirtiofs then
            "-chardev socket,id=fs-${tag},path=virtiofsd-${tag}.sock -device vhost-user-fs-pci,chardev=fs-${tag},tag=${tag}"
          else
            "-virtfs local,path=${share.source},security_model=${share.securityModel},mount_tag=${tag}"
        ) shares)} \
        ${concatStringsSep " \\\n    " config.virtualisation.qemu.options} \
        $QEMU_OPTS \
        "$@"
  '';
in
{
  options = {
    virtualisation.fileSystems = options.fileSystems;
    virtualisation.memorySize = mkOption { type = types.ints.positive; default = 1024; };
    virtualisation.msize = mkOption { type = types.ints.positive; default = 16384; };
    virtualisation.cores = mkOption { type = types.ints.positive; default = 1; };
    virtualisation.sharedDirectories = mkOption {
      type = types.attrsOf (types.submodule {
        options.source = mkOption { type = types.str; };
        options.target = mkOption { type = types.path; };
        options.securityModel = mkOption {
          type = types.enum [ "passthrough" "mapped-xattr" "mapped-file" "none" ];
          default = "mapped-xattr";
        };
      });
      default = { };
    };
    virtualisation.writableStore = mkOption { type = types.bool; default = cfg.mountHostNixStore; };
    virtualisation.writableStoreUseTmpfs = mkOption { type = types.bool; default = true; };
    virtualisation.host.pkgs = mkOption { type = types.raw; default = pkgs; };
    virtualisation.qemu = {
      package = mkOption {
        type = types.package;
        default =
          if hostPkgs.stdenv.hostPlatform.qemuArch == pkgs.stdenv.hostPlatform.qemuArch then
            hostPkgs.qemu_kvm
          else
            hostPkgs.qemu;
      };
      options = mkOption { type = types.listOf types.str; default = [ ]; };
      networkingOptions = mkOption { type = types.listOf types.str; default = [ ]; };
      enableSharedMemory = mkOption {
        type = types.bool;
        default = useVirtiofs;
        description = "Back guest RAM with a shared memfd (virtiofsd needs it).";
      };
    };
    virtualisation.useNixStoreImage = mkOption { type = types.bool; default = false; };
    virtualisation.mountHostNixStore = mkOption { type = types.bool; default = !cfg.useNixStoreImage && !cfg.useBootLoader; };
    virtualisation.useBootLoader = mkOption { type = types.bool; default = false; };
    virtualisation.useDefaultFilesystems = mkOption { type = types.bool; default = true; };
    virtualisation.useHostCerts = mkOption { type = types.bool; default = false; };
    virtualisation.diskImage = mkOption { type = types.nullOr types.str; default = "./${config.system.name}.qcow2"; };
    virtualisation.rootDevice = mkOption { type = types.nullOr types.path; default = "/dev/disk/by-label/nixos"; };
  };

  config = {
    virtualisation.sharedDirectories = {
      nix-store = mkIf cfg.mountHostNixStore {
        source = builtins.storeDir;
        target = "/nix/.ro-store";
        securityModel = "none";
      };
      xchg = {
        source = ''"$TMPDIR"/xchg'';
        securityModel = "none";
        target = "/tmp/xchg";
      };
      shared = {
        source = ''"''${SHARED_DIR:-$TMPDIR/xchg}"'';
        target = "/tmp/shared";
        securityModel = "none";
      };
      certs = mkIf cfg.useHostCerts {
        source = ''"$TMPDIR"/certs'';
        target = "/etc/ssl/certs";
        securityModel = "none";
      };
    };

    virtualisation.qemu.networkingOptions = [
      "-net nic,netdev=user.0,model=virtio"
      "-netdev user,id=user.0,\"$QEMU_NET_OPTS\""
    ];

    virtualisation.qemu.options = mkIf cfg.qemu.enableSharedMemory [
      "-object memory-backend-memfd,id=mem,size=${toString cfg.memorySize}M,share=on"
      "-machine memory-backend=mem"
    ];

    fileSystems = lib.mkIf (cfg.fileSystems != { }) (mkVMOverride cfg.fileSystems);

    virtualisation.fileSystems =
      let
        mkSharedDir = tag: share: {
          name = share.target;
          value.device = tag;
          value.fsType = if useVirtiofs then "virtiofs" else "9p";
          value.neededForBoot = true;
          value.options =
            if useVirtiofs then [ "defaults" ]
            else [
              "trans=virtio"
              "version=9p2000.L"
              "msize=${toString cfg.msize}"
              "x-systemd.requires=modprobe@9pnet_virtio.service"
            ] ++ lib.optional (tag == "nix-store") "cache=loose";
        };
      in
      lib.mkMerge [
        (lib.mapAttrs' mkSharedDir cfg.sharedDirectories)
        {
          "/" = lib.mkIf cfg.useDefaultFilesystems (
            if cfg.diskImage == null then
              { device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=755" ]; }
            else
              { device = cfg.rootDevice; fsType = "ext4"; }
          );
          "/nix/store" = lib.mkIf (cfg.useNixStoreImage || cfg.mountHostNixStore) (
            if cfg.writableStore then
              { overlay = { lowerdir = [ "/nix/.ro-store" ]; upperdir = "/nix/.rw-store/upper"; workdir = "/nix/.rw-store/work"; }; }
            else
              { device = "/nix/.ro-store"; options = [ "bind" ]; }
          );
          "/nix/.rw-store" = lib.mkIf (cfg.writableStore && cfg.writableStoreUseTmpfs) {
            fsType = "tmpfs";
            options = [ "mode=0755" ];
            neededForBoot = true;
          };
        }
      ];

    system.build.vm =
      hostPkgs.runCommand "nixos-vm"
        {
          preferLocalBuild = true;
          meta.mainProgram = "run-${config.system.name}-vm";
        }
        ''
          mkdir -p $out/bin
          ln -s ${config.system.build.toplevel} $out/system
          ln -s ${hostPkgs.writeScript "run-nixos-vm" startVM} $out/bin/run-${config.system.name}-vm
        '';
    system.build.startVM = startVM;
  };
}
