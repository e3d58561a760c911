# users.users / users.groups as NixOS declares them (nixos/modules/config/users-groups.nix),
# reduced to the options nix/module.nix sets, with the assertions NixOS makes about them. Not
# freeform: a misspelt option fails here as it would in NixOS.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  userOpts = { name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      isSystemUser = mkOption { type = types.bool; default = false; };
      isNormalUser = mkOption { type = types.bool; default = false; };
      group = mkOption { type = types.str; default = ""; };
      description = mkOption { type = types.str; default = ""; };
      uid = mkOption { type = types.nullOr types.int; default = null; };
    };
  };
  groupOpts = { name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      gid = mkOption { type = types.nullOr types.int; default = null; };
      members = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  };
in
{
  options.users = {
    users = mkOption { type = types.attrsOf (types.submodule userOpts); default = { }; };
    groups = mkOption { type = types.attrsOf (types.submodule groupOpts); default = { }; };
  };
  # NixOS's own groups, as nixos/modules/misc/ids.nix and users-groups.nix give them.
  config.users.groups = { root.gid = 0; kvm = { }; nogroup = { }; };
  config.assertions = lib.concatLists (lib.mapAttrsToList (n: u: [
    {
      assertion = u.isSystemUser != u.isNormalUser || (!u.isSystemUser && !u.isNormalUser && n == "root");
      message = "Exactly one of users.users.${n}.isSystemUser and users.users.${n}.isNormalUser must be set.";
    }
    {
      assertion = u.group != "" && config.users.groups ? ${u.group};
      message = "users.users.${n}.group (${u.group}) is unset or not a group in users.groups.";
    }
  ]) config.users.users);
}
