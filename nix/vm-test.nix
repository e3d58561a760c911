# checks.<system>.vm-test: a NixOS VM test whose VM gets its /nix/store (under a writable
# overlay) and the driver's xchg directory through vufsd (the test driver module), and runs a
# share of its own with the NixOS module.
{ pkgs, self }:

pkgs.testers.runNixOSTest {
  name = "vufsd";

  defaults = {
    imports = [ self.nixosModules.testDriver ];
    virtualisation.vufsd.enable = true;
  };

  nodes.machine = { pkgs, ... }: {
    imports = [ self.nixosModules.default ];
    services.vufsd.shares.data = {
      sharedDir = "/srv/data";
      cache = "never";
      extraArgs = [ "--xattr" ];
    };
    systemd.tmpfiles.rules = [ "d /srv/data 0755 root root -" ];
    environment.systemPackages = [ pkgs.python3 ];
  };

  testScript = ''
    import os
    import time

    def vufsd_daemons():
        """The command lines of the vufsd processes the driver (this sandbox) can see."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/bin/vufsd"):
                found.append(argv)
        return found

    machine.wait_for_unit("multi-user.target")

    with subtest("the store and xchg come from vufsd"):
        mounts = machine.succeed("cat /proc/mounts")
        assert "nix-store /nix/.ro-store virtiofs" in mounts, mounts
        assert "xchg /tmp/xchg virtiofs" in mounts, mounts
        daemons = vufsd_daemons()
        assert any(b"/nix/store" in b" ".join(a) for a in daemons), daemons
        assert all(b"--exit-with-parent" in a for a in daemons), daemons
        # Through the overlay, every lower file is opened with O_NOATIME: vufsd runs as the
        # driver's unprivileged user on a root-owned store, so this is --noatime=auto at work.
        machine.succeed("${pkgs.python3.interpreter} -c 'import os; os.read(os.open(\"/run/current-system/sw/bin/bash\", os.O_RDONLY | os.O_NOATIME), 4)'")
        machine.succeed("/run/current-system/sw/bin/bash -c true")

    with subtest("a file written in the guest reaches the driver"):
        machine.succeed("echo from-the-guest > /tmp/xchg/out.txt")
        machine.copy_from_vm("/tmp/xchg/out.txt", "")

    with subtest("services.vufsd: socket-activated share"):
        machine.wait_for_unit("vufsd@data.socket")
        machine.succeed("test -S /run/vufsd/data.sock")
        machine.succeed("test -L /etc/systemd/system/sockets.target.wants/vufsd@data.socket")
        machine.succeed("grep -qx \"SHARED_DIR='/srv/data'\" /etc/vufsd/data.conf")
        machine.succeed("grep -qx \"EXTRA_ARGS='--xattr'\" /etc/vufsd/data.conf")
        machine.succeed("vufsd --print-capabilities | grep -q separate-options")
        machine.succeed("systemd-analyze verify vufsd@data.service vufsd@data.socket")

    with subtest("the daemons end with the VM"):
        machine.shutdown()
        deadline = time.monotonic() + 30
        while vufsd_daemons() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not vufsd_daemons(), vufsd_daemons()
  '';
}
