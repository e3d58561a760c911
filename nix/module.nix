# services.vufsd.shares.<name>: one virtio-fs share per entry, served by the packaged
# vufsd@<name>.service / vufsd@<name>.socket template units (so the hardening and the command
# line are exactly those of contrib/systemd). The module only writes the share's settings to
# /etc/vufsd/<name>.conf (nix/lib.nix, from contrib/share-options.json), adds drop-ins for
# the user, group and socket path, and creates that user and group.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.services.vufsd;
  vufsdLib = import ./lib.nix;

  absolutePath = types.addCheck types.str (lib.hasPrefix "/") // {
    name = "absolutePath";
    description = "absolute path";
  };

  shareOptions = { name, ... }: {
    options = {
      sharedDir = mkOption {
        type = absolutePath;
        example = "/srv/share";
        description = "The host directory to share (an absolute path).";
      };
      socketPath = mkOption {
        type = absolutePath;
        default = "/run/vufsd/${name}.sock";
        defaultText = lib.literalExpression ''"/run/vufsd/''${name}.sock"'';
        description = ''
          The vhost-user socket QEMU connects to
          (`-chardev socket,id=fs0,path=...` `-device vhost-user-fs-pci,chardev=fs0,tag=...`);
          at most 107 bytes, as for any unix socket.
        '';
      };
      user = mkOption {
        type = types.str;
        default = "root";
        description = ''
          The user the daemon runs as. As root, files get the guest caller's owner; as
          another user, every file the guest creates belongs to that user.
        '';
      };
      group = mkOption {
        type = types.str;
        default = "root";
        description = "The group the daemon runs as; its members may connect to the socket.";
      };
      createUser = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Create `user` (a system user whose group is `group`) and `group` when they are not
          root. Turn it off when they are defined elsewhere (users.users, or a directory
          service); they must then exist when the socket is started.
        '';
      };
      cache = mkOption {
        type = types.enum [ "auto" "always" "metadata" "never" ];
        default = "auto";
        description = "What the guest may cache (vufsd --cache).";
      };
      readonly = mkOption {
        type = types.bool;
        default = false;
        description = "Refuse every modification with EROFS.";
      };
      noatime = mkOption {
        type = types.enum [ "auto" "preserve" "strip" ];
        default = "auto";
        description = "O_NOATIME policy (vufsd --noatime, docs/noatime.md).";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--xattr" "--thread-pool-size=4" ];
        description = "More vufsd options (no whitespace or quotes inside an argument).";
      };
    };
  };

  settingsOf = share: {
    inherit (share) sharedDir cache readonly noatime extraArgs;
  };

  # The shares whose user and group this module creates.
  created = lib.filterAttrs (_: s: s.createUser) cfg.shares;
in
{
  options.services.vufsd = {
    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage <vufsd/nix/package.nix> { }";
      description = "The vufsd package (the flake's nixosModules.default sets its own build).";
    };
    shares = mkOption {
      type = types.attrsOf (types.submodule shareOptions);
      default = { };
      example = lib.literalExpression ''
        { data = { sharedDir = "/srv/data"; group = "kvm"; }; }
      '';
      description = ''
        Directories to serve to VMs, one vufsd socket (and daemon) each. A name becomes the
        systemd unit vufsd@NAME: ASCII letters, digits, `_`, `.` and `-`, starting with a
        letter or digit.
      '';
    };
  };

  config = lib.mkIf (cfg.shares != { }) {
    assertions = lib.concatLists (lib.mapAttrsToList (name: share:
      map (message: { assertion = false; inherit message; }) (lib.filter (m: m != null) [
        (vufsdLib.shareNameProblem name)
        (vufsdLib.socketPathProblem name share.socketPath)
      ])
    ) cfg.shares);

    environment.systemPackages = [ cfg.package ];
    systemd.packages = [ cfg.package ];

    environment.etc = lib.mapAttrs' (name: share:
      lib.nameValuePair "vufsd/${name}.conf" { text = vufsdLib.envFile (settingsOf share); }
    ) cfg.shares;

    systemd.services = lib.mapAttrs' (name: share:
      lib.nameValuePair "vufsd@${name}" {
        overrideStrategy = "asDropin";
        restartTriggers = [ config.environment.etc."vufsd/${name}.conf".text ];
        serviceConfig = {
          User = share.user;
          Group = share.group;
        };
      }
    ) cfg.shares;

    systemd.sockets = lib.mapAttrs' (name: share:
      lib.nameValuePair "vufsd@${name}" {
        overrideStrategy = "asDropin";
        # Instances of a packaged template are not enabled by its [Install] section: pull
        # each one in here (sockets.target.wants/vufsd@NAME.socket).
        wantedBy = [ "sockets.target" ];
        # The empty entry resets the template's /run/vufsd/%i.sock.
        listenStreams = [ "" share.socketPath ];
        socketConfig = {
          SocketUser = share.user;
          SocketGroup = share.group;
        };
      }
    ) cfg.shares;

    users.users = lib.mapAttrs' (_: share:
      lib.nameValuePair share.user {
        isSystemUser = true;
        inherit (share) group;
        description = "vufsd virtio-fs daemon";
      }
    ) (lib.filterAttrs (_: s: s.user != "root") created);

    users.groups = lib.mapAttrs' (_: share: lib.nameValuePair share.group { })
      (lib.filterAttrs (_: s: s.group != "root") created);
  };
}
