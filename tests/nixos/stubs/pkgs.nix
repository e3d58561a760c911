# The kit's stand-in package set (../shared/nixos-eval/stubs/pkgs.nix: derivations that never
# build) with what vufsd's Nix files need besides: a rustPlatform whose buildRustPackage checks
# what the real one checks at evaluation time (after the kit's examples/flake-eval.nix),
# upstream virtiofsd's stand-in, and callPackage over the whole set.
{ kit, lib, system ? "x86_64-linux" }:
let
  base = import (kit + "/stubs/pkgs.nix") { inherit lib system; };
  rustPlatform.buildRustPackage = args:
    assert !(args ? cargoHash && args ? cargoLock);
    let
      lock = builtins.fromTOML (builtins.readFile args.cargoLock.lockFile);
      gitDeps = builtins.filter (p: lib.hasPrefix "git+" (p.source or "")) lock.package;
      missing = builtins.filter (p: !(args.cargoLock.outputHashes or { } ? "${p.name}-${p.version}")) gitDeps;
    in
    assert lib.assertMsg (missing == [ ]) "git dependencies without cargoLock.outputHashes: ${toString (map (p: p.name) missing)}";
    base.runCommand "${args.pname}-${args.version}" {
      # Forces the filtered source into the store (a local copy, no download).
      src = "${args.src}";
      cargoDeps = base.writeText "cargo-deps" (toString (map (p: "${p.name}-${p.version}:${p.checksum or "-"}") lock.package));
      inherit (args) cargoBuildFlags cargoTestFlags postInstall;
      meta = args.meta;
    } "stub" // { crates = builtins.length lock.package; srcPath = "${args.src}"; };
  self = base // {
    inherit rustPlatform;
    virtiofsd = base.runCommand "virtiofsd-1.14.0" { } "stub";
    callPackage = f: args:
      let fn = if builtins.isFunction f then f else import f;
      in fn (builtins.intersectAttrs (builtins.functionArgs fn) (self // args));
  };
in
self
