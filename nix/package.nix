# vufsd built from this repository, with its systemd units, the QEMU vhost-user description
# (share/qemu/vhost-user/10-vufsd.json, for libvirt's discovery) and the man page.
{ lib, rustPlatform }:

let
  cargo = builtins.fromTOML (builtins.readFile ../Cargo.toml);
in
rustPlatform.buildRustPackage {
  pname = "vufsd";
  inherit (cargo.package) version;

  # The repository without .git, build results (target/, result) and the fuzz workspace.
  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.;
    filter = path: type:
      !(type == "directory" && builtins.elem (baseNameOf path) [ "target" "fuzz" ]);
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [ "--package" "vufsd" ];
  # The integration tests boot QEMU guests with a Debian kernel as root: the build sandbox has
  # neither. The unit tests run; the VM tests run in CI (scripts/test) and in checks.vm-test.
  cargoTestFlags = [ "--package" "vufsd" "--lib" ];

  postInstall = ''
    install -Dm644 contrib/systemd/vufsd@.service $out/lib/systemd/system/vufsd@.service
    install -Dm644 contrib/systemd/vufsd@.socket $out/lib/systemd/system/vufsd@.socket
    install -Dm644 contrib/systemd/example.conf $out/share/doc/vufsd/example.conf
    install -Dm644 contrib/qemu/10-vufsd.json $out/share/qemu/vhost-user/10-vufsd.json
    for f in $out/lib/systemd/system/vufsd@.service $out/share/qemu/vhost-user/10-vufsd.json; do
      substituteInPlace "$f" --replace-fail /usr/bin/vufsd $out/bin/vufsd
    done
    install -Dm644 docs/vufsd.1 $out/share/man/man1/vufsd.1
  '';

  meta = {
    description = "vhost-user-fs daemon: serves a host directory to a QEMU guest over virtio-fs";
    license = with lib.licenses; [ asl20 bsd3 ];
    mainProgram = "vufsd";
    platforms = lib.platforms.linux;
  };
}
