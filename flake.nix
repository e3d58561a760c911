{
  description = "vufsd: a vhost-user-fs daemon serving host directories to QEMU guests over virtio-fs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      packageFor = system: self.packages.${system}.default;
      shimFor = pkgs: vufsd: pkgs.callPackage ./nix/virtiofsd-shim.nix {
        inherit (pkgs) writeTextFile runtimeShell;
        inherit vufsd;
      };
    in
    {
      packages = forAllSystems (pkgs: rec {
        vufsd = pkgs.callPackage ./nix/package.nix { };
        # bin/virtiofsd running vufsd, for nixpkgs code that starts virtiofsd itself.
        vufsd-as-virtiofsd = shimFor pkgs vufsd;
        default = vufsd;
      });

      # `vufsd` in the package set; overlays.virtiofsd also makes `virtiofsd` vufsd, for
      # everything in nixpkgs that runs virtiofsd (NixOS VMs' qemu-vm.nix, runInLinuxVM).
      overlays.default = final: prev: {
        vufsd = final.callPackage ./nix/package.nix { };
      };
      overlays.virtiofsd = final: prev: {
        vufsd = final.callPackage ./nix/package.nix { };
        virtiofsd = shimFor final final.vufsd;
      };

      # services.vufsd.shares.<name> = { sharedDir, socketPath, user, group, createUser,
      # cache, readonly, noatime, extraArgs }: one socket-activated vufsd@<name> per share.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        services.vufsd.package = lib.mkDefault (packageFor pkgs.stdenv.hostPlatform.system);
      };

      # For NixOS VMs and VM tests: virtualisation.vufsd.enable = true serves the VM's shared
      # directories and the host's /nix/store through vufsd (docs/nixos.md).
      nixosModules.testDriver = { config, lib, ... }: {
        imports = [ ./nix/test-driver.nix ];
        virtualisation.vufsd.package = lib.mkDefault
          (packageFor config.virtualisation.vufsd.hostPkgs.stdenv.hostPlatform.system);
      };

      checks = forAllSystems (pkgs: {
        package = packageFor pkgs.stdenv.hostPlatform.system;
        vm-test = import ./nix/vm-test.nix { inherit pkgs self; };
      });
    };
}
