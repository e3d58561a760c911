# `virtiofsd` that is vufsd: bin/virtiofsd runs vufsd with the caller's virtiofsd arguments
# (nix/vm-scripts.nix's virtiofsdShim). For nixpkgs code that starts `virtiofsd` itself — the
# qemu-vm.nix of NixOS VMs since September 2026, vmTools' runInLinuxVM — through the test-driver
# module (nix/test-driver.nix) or the flake's overlays.virtiofsd.
{ writeTextFile, runtimeShell, vufsd, logLevel ? "warn", extraArgs ? [ ] }:

let
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).package.version;
in
writeTextFile {
  name = "vufsd-as-virtiofsd-${version}";
  executable = true;
  destination = "/bin/virtiofsd";
  text = "#!${runtimeShell}\n" + (import ./vm-scripts.nix).virtiofsdShim {
    vufsd = "${vufsd}/bin/vufsd";
    inherit logLevel extraArgs;
  };
  # lib.getExe finds bin/virtiofsd, as for nixpkgs' virtiofsd.
  meta = {
    mainProgram = "virtiofsd";
    description = "vufsd under virtiofsd's name, for nixpkgs code that starts virtiofsd";
    platforms = [ "x86_64-linux" "aarch64-linux" ];
  };
}
