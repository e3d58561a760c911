# The virtiofsd command line of the reconstructed virtiofs-era qemu-vm.nix
# (stubs/qemu-vm-virtiofs.nix), as shell text: `source` is shell text in qemu-vm.nix (e.g.
# "$TMPDIR"/xchg). These are the arguments nixpkgs' vmTools (runInLinuxVM,
# pkgs/build-support/vm/default.nix) gives virtiofsd, in its spelling (separate words); the
# real qemu-vm.nix after PR #552774 was not available to copy. tests/vm_nixos.rs runs vufsd's
# virtiofsd stand-in with exactly these.
{ tag, source }:
"--xattr --socket-path virtiofsd-${tag}.sock --sandbox none --seccomp none --shared-dir ${source}"
