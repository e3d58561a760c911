# services.vufsd.shares.<name>: one virtio-fs share per entry, served by the packaged
# vufsd@<name>.service / vufsd@<name>.socket template units (so the hardening and the command
# line are exactly those of contrib/systemd). The module only writes the share's settings to
# /etc/vufsd/<name>.conf (nix/lib.nix, from contrib/share-options.json) and adds drop-ins for
# the user, group and socket path.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.services.vufsd;
  vufsdLib = import ./lib.nix;

  shareOptions = { name, ... }: {
    options = {
      sharedDir = mkOption {
        type = types.str;
        example = "/srv/share";
        description = "The host directory to share.";
      };
      socketPath = mkOption {
        type = types.str;
        default = "/run/vufsd/${name}.sock";
        defaultText = lib.literalExpression ''"/run/vufsd/''${name}.sock"'';
        description = ''
          The vhost-user socket QEMU connects to
          (`-chardev socket,id=fs0,path=...` `-device vhost-user-fs-pci,chardev=fs0,tag=...`).
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
in
{
  options.services.vufsd = {
    package = mkOption {
      type = types.package;
      description = "The vufsd package (the flake's nixosModules.default sets it).";
    };
    shares = mkOption {
      type = types.attrsOf (types.submodule shareOptions);
      default = { };
      example = lib.literalExpression ''
        { data = { sharedDir = "/srv/data"; group = "kvm"; }; }
      '';
      description = "Directories to serve to VMs, one vufsd socket (and daemon) each.";
    };
  };

  config = lib.mkIf (cfg.shares != { }) {
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
        # The empty entry resets the template's /run/vufsd/%i.sock.
        listenStreams = [ "" share.socketPath ];
        socketConfig = {
          SocketUser = share.user;
          SocketGroup = share.group;
        };
      }
    ) cfg.shares;

    # Instances of a packaged template are pulled in by name (as NixOS does for getty@ttyN).
    systemd.targets.sockets.wants = map (name: "vufsd@${name}.socket") (lib.attrNames cfg.shares);
  };
}
