# Evaluate vufsd's Nix files the way NixOS does, without building anything:
#
#   nix-instantiate --eval --strict --json tests/nixos/eval.nix \
#     --argstr proj "$PWD" --argstr kit /path/to/nixos-eval -A vm.startVM
#
# against either
# - `kit`: real nixpkgs `lib` with stand-ins for the NixOS modules a VM touches (the
#   nixos-eval kit, ../shared/nixos-eval in CI), plus ./stubs; `era` picks qemu-vm.nix: "9p"
#   (the kit's excerpt of nixpkgs 00008e8e) or "virtiofs" (./stubs/qemu-vm-virtiofs.nix, a
#   reconstruction of nixpkgs after PR #552774); or
# - `nixpkgs`: a real nixpkgs checkout (whatever era it is), evaluated with its own NixOS.
# Both give the same attributes (tests/nixos_eval.rs reads them; README.md says more).
{ proj
, kit ? ""
, nixpkgs ? ""
, system ? "x86_64-linux"
  # services.vufsd.shares for `module`.
, shares ? { data = { sharedDir = "/srv/data"; }; }
  # For `vm` with the kit: which qemu-vm.nix, composed as runNixOSTest composes a node (or as
  # a plain VM), and whether qemu-vm.nix has virtualisation.qemu.enableSharedMemory.
, era ? "9p"
, framework ? true
, sharedMemoryOption ? true
  # One more module for the VM node, e.g. { virtualisation.vufsd.hook = "qemu"; }.
, nodeExtra ? { }
}:
let
  useKit = kit != "";
  lib = if useKit then import (kit + "/nixpkgs-lib/lib") else import (nixpkgs + "/lib");
  failed = assertions: map (a: a.message) (lib.filter (a: !a.assertion) assertions);

  # What the tests compare, for a NixOS configuration `c` of a VM.
  vmInfo = c: {
    qemuPackage = c.virtualisation.qemu.package.name;
    qemuOptions = c.virtualisation.qemu.options;
    enableSharedMemory = c.virtualisation.qemu.enableSharedMemory or null;
    fileSystems = lib.mapAttrs (n: v: { inherit (v) device fsType options; }) c.virtualisation.fileSystems;
    startVM = c.system.build.startVM;
    hostVirtiofsd = c.virtualisation.host.pkgs.virtiofsd.outPath or null;
    shimText = c.virtualisation.host.pkgs.virtiofsd.text or null;
    wrapperText = c.virtualisation.qemu.package.passthru.wrapper.text or null;
    failedAssertions = failed c.assertions;
    vm = c.system.build.vm.drvPath;
  };

  # The node of nix/vm-test.nix, as a module list: its defaults and nodes.machine.
  vmTestModules = package: [
    {
      imports = [ (proj + "/nix/test-driver.nix") ];
      virtualisation.vufsd.enable = true;
      virtualisation.vufsd.package = lib.mkDefault package;
    }
    {
      imports = [ (proj + "/nix/module.nix") ];
      services.vufsd.package = lib.mkDefault package;
      services.vufsd.shares.data = { sharedDir = "/srv/data"; cache = "never"; extraArgs = [ "--xattr" ]; };
      systemd.tmpfiles.rules = [ "d /srv/data 0755 root root -" ];
    }
    nodeExtra
  ];

  kitEval = rec {
    pkgs = import ./stubs/pkgs.nix { inherit kit lib system; };
    vufsdPkg = pkgs.runCommand "vufsd-0.1.0" { } "stub";
    kitExcerpt = kit + "/stubs/qemu-vm-excerpt.nix";
    # An older nixpkgs, before enableSharedMemory existed: the kit's excerpt without it.
    withoutSharedMemory =
      let excerptFn = import kitExcerpt;
      in lib.setFunctionArgs (args:
        let m = excerptFn args;
        in m // {
          options = lib.recursiveUpdate (removeAttrs m.options [ "virtualisation" ]) {
            virtualisation = m.options.virtualisation // {
              qemu = removeAttrs m.options.virtualisation.qemu [ "enableSharedMemory" ];
            };
          };
        }) (lib.functionArgs excerptFn);
    excerpt =
      if era == "virtiofs" then ./stubs/qemu-vm-virtiofs.nix
      else if sharedMemoryOption then kitExcerpt
      else withoutSharedMemory;
    base = [
      { _module.args.pkgs = pkgs; }
      (kit + "/stubs/nixos-min.nix")
      ./stubs/users.nix
    ];
    # nixos/lib/testing: driver.nix's nodeDefaults, then nodes.nix's base-qemu module.
    frameworkModules = lib.optionals framework [
      ({ options, lib, ... }: {
        config = lib.optionalAttrs (options.virtualisation.qemu ? enableSharedMemory) {
          virtualisation.qemu.enableSharedMemory = lib.mkDefault true;
        };
      })
      { key = "base-qemu"; virtualisation.qemu.package = pkgs.qemu_test; virtualisation.host.pkgs = pkgs; }
    ];
    node = modules: (lib.evalModules {
      modules = base ++ [ (kit + "/stubs/nixos-vm-base.nix") excerpt ] ++ modules ++ frameworkModules;
    }).config;

    module =
      let
        c = (lib.evalModules {
          modules = base ++ [ (proj + "/nix/module.nix") { services.vufsd.shares = shares; } ];
        }).config;
        units = import (kit + "/stubs/render.nix") {
          inherit lib;
          config = c;
          # What systemd.packages provides: the package's lib/systemd/system, and systemd's
          # own sockets.target.
          packagedUnits = [ "vufsd@.service" "vufsd@.socket" "sockets.target" ];
        };
      in
      {
        etc = lib.mapAttrs (n: v: v.text) c.environment.etc;
        units = lib.mapAttrs (n: u: { inherit (u) path text; wantedBy = map (l: lib.removeSuffix ".wants/${n}" (lib.removePrefix "/etc/systemd/system/" l)) u.wantsLinks; }) units;
        systemPackages = map (p: p.name) c.environment.systemPackages;
        users = lib.mapAttrs (n: u: { inherit (u) isSystemUser group; }) c.users.users;
        groups = lib.attrNames c.users.groups;
        failedAssertions = failed c.assertions;
      };

    vmConfig = node (vmTestModules vufsdPkg);
    vm = vmInfo vmConfig // {
      # The scripts as nix/vm-scripts.nix writes them for this VM (tests/vm_nixos.rs runs
      # that text): the module's derivations must hold exactly these.
      expectedWrapperText = "#!${pkgs.runtimeShell}\n" + (import (proj + "/nix/vm-scripts.nix")).qemuWrapper {
        vufsd = "${vufsdPkg}/bin/vufsd";
        shares = lib.mapAttrs (tag: _:
          if tag == "nix-store" then { cache = "always"; readonly = true; }
          else { cache = "auto"; readonly = false; }) vmConfig.virtualisation.sharedDirectories;
        coreutils = "${pkgs.coreutils}";
      };
      expectedShimText = "#!${pkgs.runtimeShell}\n" + (import (proj + "/nix/vm-scripts.nix")).virtiofsdShim {
        vufsd = "${vufsdPkg}/bin/vufsd";
      };
    };
    # For nix-instantiate (no --eval): every derivation, written as a .drv.
    drvs = {
      vm = vmConfig.system.build.vm;
      package = flake.packageDrv;
      shim = flake.shimDrv;
    };

    # proj/flake.nix's outputs with a stand-in `nixpkgs` input whose testers.runNixOSTest
    # composes each node as above.
    flake =
      let
        stubPkgs = pkgs // {
          testers.runNixOSTest = t: {
            inherit (t) name testScript;
            nodes = lib.mapAttrs (n: m: vmInfo (node [ t.defaults m nodeExtra ])) t.nodes;
          };
        };
        nixpkgsInput = { inherit lib; legacyPackages.${system} = stubPkgs; legacyPackages.aarch64-linux = stubPkgs; };
        self = (import (proj + "/flake.nix")).outputs { inherit self; nixpkgs = nixpkgsInput; } // { outPath = proj; };
        applied = overlay: let final = stubPkgs // overlay final stubPkgs; in final;
      in
      {
        packageDrv = self.packages.${system}.default;
        shimDrv = self.packages.${system}.vufsd-as-virtiofsd;
        package = { inherit (self.packages.${system}.default) name crates srcPath; };
        shim = { inherit (self.packages.${system}.vufsd-as-virtiofsd) name text; };
        overlayVirtiofsd = (applied self.overlays.virtiofsd).virtiofsd.name;
        overlayVufsd = (applied self.overlays.default).vufsd.name;
        vmTest = self.checks.${system}.vm-test.nodes.machine;
      };
  };

  nixpkgsEval = rec {
    pkgs = import nixpkgs { inherit system; config = { }; overlays = [ ]; };
    module =
      let
        c = (import (nixpkgs + "/nixos/lib/eval-config.nix") {
          inherit system;
          modules = [
            (proj + "/nix/module.nix")
            { services.vufsd.shares = shares; boot.isContainer = true; system.stateVersion = lib.trivial.release; }
          ];
        }).config;
      in
      {
        etc = lib.mapAttrs (n: v: v.text) (lib.filterAttrs (n: _: lib.hasPrefix "vufsd/" n) c.environment.etc);
        units = lib.mapAttrs (n: u: { inherit (u) text wantedBy; path = "/etc/systemd/system/${n}"; })
          (lib.filterAttrs (n: _: lib.hasPrefix "vufsd@" n) c.systemd.units);
        systemPackages = map (p: p.name) c.environment.systemPackages;
        users = lib.mapAttrs (n: u: { inherit (u) isSystemUser group; })
          (lib.filterAttrs (n: u: u.description == "vufsd virtio-fs daemon") c.users.users);
        groups = lib.attrNames c.users.groups;
        # A real NixOS has assertions of its own; these tests are about vufsd's.
        failedAssertions = lib.filter (m: lib.hasInfix "vufsd" m) (failed c.assertions);
      };
    flakeSelf = (import (proj + "/flake.nix")).outputs {
      self = flakeSelf // { outPath = proj; };
      nixpkgs = { inherit lib; legacyPackages.${system} = pkgs; };
    };
    test = flakeSelf.checks.${system}.vm-test;
    vm = vmInfo test.nodes.machine;
    drvs = {
      vm = test.driver;
      package = flakeSelf.packages.${system}.default;
      shim = flakeSelf.packages.${system}.vufsd-as-virtiofsd;
    };
    flake = {
      package = { inherit (flakeSelf.packages.${system}.default) name; drv = flakeSelf.packages.${system}.default.drvPath; };
      shim = { inherit (flakeSelf.packages.${system}.vufsd-as-virtiofsd) name text; };
      overlayVirtiofsd = (pkgs.extend flakeSelf.overlays.virtiofsd).virtiofsd.name;
      overlayVufsd = (pkgs.extend flakeSelf.overlays.default).vufsd.name;
      vmTest = vm;
    };
  };

  chosen = if useKit then kitEval else nixpkgsEval;
in
{
  source = if useKit then "kit" else "nixpkgs ${lib.trivial.version}";
  inherit (chosen) module vm flake drvs;
}
