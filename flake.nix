{
  description = "vufsd: a vhost-user-fs daemon serving host directories to QEMU guests over virtio-fs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      packageFor = system: self.packages.${system}.default;
    in
    {
      packages = forAllSystems (pkgs: rec {
        vufsd = pkgs.callPackage ./nix/package.nix { };
        default = vufsd;
      });

      # services.vufsd.shares.<name> = { sharedDir, socketPath, user, group, cache, readonly,
      # noatime, extraArgs }: one socket-activated vufsd@<name> per share.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        services.vufsd.package = lib.mkDefault (packageFor pkgs.stdenv.hostPlatform.system);
      };

      # For NixOS VM tests: virtualisation.vufsd.enable = true serves the VM's shared
      # directories and host /nix/store through vufsd instead of QEMU's 9p.
      nixosModules.testDriver = { config, lib, ... }: {
        imports = [ ./nix/test-driver.nix ];
        virtualisation.vufsd.package = lib.mkDefault
          (packageFor config.virtualisation.host.pkgs.stdenv.hostPlatform.system);
      };

      checks = forAllSystems (pkgs: {
        package = packageFor pkgs.stdenv.hostPlatform.system;
        vm-test = import ./nix/vm-test.nix { inherit pkgs self; };
      });
    };
}
