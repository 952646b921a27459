//! The command line of `palisadectl`: every subcommand and flag (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use palisade_common::{ActionKind, ActionSource, ActionStatus};

#[derive(Parser)]
#[command(
    name = "palisadectl",
    version,
    about = "Palisade operator CLI: request, approve and follow response actions"
)]
pub(crate) struct Cli {
    /// The controller's API, e.g. http://127.0.0.1:7480.
    #[arg(
        long,
        global = true,
        env = "PALISADE_URL",
        default_value = "http://127.0.0.1:7480"
    )]
    pub(crate) url: String,
    /// Your API token.
    #[arg(long, global = true, env = "PALISADE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM CA certificate to trust for an https:// URL (the controller's `ca.pem` when it
    /// issued its own API certificate); default: the system's roots.
    #[arg(long, global = true, env = "PALISADE_CA_CERT")]
    pub(crate) ca_cert: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Enrolled devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCmd,
    },
    /// Request an action on one or more devices.
    Action(ActionArgs),
    /// List, inspect and decide actions.
    Actions {
        #[command(subcommand)]
        command: ActionsCmd,
    },
    /// Files uploaded by agents (samples, packages).
    Artifacts {
        #[command(subcommand)]
        command: ArtifactsCmd,
    },
    /// Enrolment tokens for new agents.
    EnrollToken {
        #[command(subcommand)]
        command: EnrollTokenCmd,
    },
    /// Operators and their roles.
    Users {
        #[command(subcommand)]
        command: UsersCmd,
    },
    /// API tokens: list, create, revoke, rotate.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Approval policy per device group and action kind.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// What may run on a device group's devices while execution is restricted, beyond the
    /// trusted system binaries.
    ExecAllowlist {
        #[command(subcommand)]
        command: AllowlistCmd,
    },
    /// Antivirus rule sets: YARA rules and ClamAV hash lists, compiled on the controller.
    Rules {
        #[command(subcommand)]
        command: RulesCmd,
    },
    /// What a detection leads to, per device group: full (quarantine at once), semi
    /// (quarantine pending approval) or none (recorded only).
    Automation {
        #[command(subcommand)]
        command: AutomationCmd,
    },
    /// Real-time protection per device group: files in the watched directories are scanned as
    /// their writers finish, and detections go the automation's way.
    Realtime {
        #[command(subcommand)]
        command: RealtimeCmd,
    },
    /// Device-group membership rules (hostname glob, address block → group).
    GroupRules {
        #[command(subcommand)]
        command: GroupRulesCmd,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Who the token belongs to.
    Whoami,
    /// The controller's version, uptime, connected agents and handshake counts.
    Status,
}

#[derive(Subcommand)]
pub(crate) enum DevicesCmd {
    List,
    /// One device and its queue of approved, unfinished actions.
    Show {
        device: String,
    },
    /// The files in a device's quarantine vault, as its agent last reported them.
    Vault {
        device: String,
    },
    /// What the device reported on its own (denied executions …), newest first.
    Events {
        device: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// An offline release code for an isolated device: `palisade-agent release-isolation
    /// --code CODE` on the device releases it without the controller (once, until expiry).
    BreakGlass {
        device: String,
        /// How long the code stays valid (at most 30d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        valid: Duration,
    },
    /// The containment targets in force (what every other device blocks).
    Contained,
    /// Put a device in a device group by hand (wins over the membership rules), or with
    /// --clear hand it back to the rules (admin of every group).
    SetGroup {
        device: String,
        #[arg(required_unless_present = "clear")]
        group: Option<String>,
        #[arg(long, conflicts_with = "group")]
        clear: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum GroupRulesCmd {
    /// The membership rules, in the order they are tried.
    List,
    /// Replace every rule (none given: remove them all). Each --rule is
    /// `GROUP [hostname=GLOB] [cidr=BLOCK]`, e.g. `--rule 'web hostname=web-* cidr=10.1.0.0/16'`;
    /// the first rule a device matches places it.
    Set {
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum AllowlistCmd {
    /// Replace a group's allowlist (with no --sha256 and no --path: empty it).
    Set {
        #[arg(long = "group", default_value = "default")]
        device_group: String,
        /// SHA-256 of an allowed file (64 hex digits). Repeatable.
        #[arg(long)]
        sha256: Vec<String>,
        /// Absolute path of an allowed file. Repeatable.
        #[arg(long)]
        path: Vec<String>,
    },
    List,
}

#[derive(Args)]
pub(crate) struct ActionArgs {
    #[command(subcommand)]
    pub(crate) kind: KindCmd,
}

/// Options every action request takes.
#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Device ids or hostnames (with --fleet: optional, default every device in scope).
    #[arg(required_unless_present = "fleet")]
    pub(crate) devices: Vec<String>,
    /// One fleet-wide action with a child per device: the devices named, or every active
    /// device you may act on that implements the kind (a release by --sha256: that holds it).
    #[arg(long)]
    pub(crate) fleet: bool,
    /// Why: required, and kept in the history.
    #[arg(long)]
    pub(crate) comment: String,
    /// Action source (default manual_device_action).
    #[arg(long)]
    pub(crate) source: Option<ActionSource>,
    /// Your ticket or case id.
    #[arg(long)]
    pub(crate) external_id: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum KindCmd {
    /// Cut the device off the network (except the controller).
    Isolate {
        #[command(flatten)]
        common: Common,
        /// Selective isolation: allow the exceptions given with --except.
        #[arg(long)]
        selective: bool,
        /// An allowed flow, e.g. `198.51.100.0/24 tcp 443 out`.
        #[arg(long = "except")]
        exceptions: Vec<String>,
        /// Release by itself after this long (e.g. 4h).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        for_: Option<Duration>,
    },
    ReleaseIsolation {
        #[command(flatten)]
        common: Common,
    },
    /// Have every other device block a managed device (by id or hostname, followed as its
    /// addresses change) or an unmanaged address, in both directions.
    Contain {
        #[command(flatten)]
        target: ContainTarget,
        /// Contain even an address other devices share or use as their default gateway.
        #[arg(long)]
        force: bool,
    },
    /// Remove a target from every device's block set.
    Uncontain {
        #[command(flatten)]
        target: ContainTarget,
    },
    /// Stop the processes using a file and move it into the agent's vault.
    Quarantine {
        #[command(flatten)]
        common: Common,
        /// Absolute path of the file (with --sha256: only if it has that hash).
        #[arg(long, required_unless_present = "sha256")]
        path: Option<String>,
        /// Quarantine every file with this hash under the --root directories.
        #[arg(long)]
        sha256: Option<String>,
        /// A directory to search for --sha256 (repeatable).
        #[arg(long = "root")]
        roots: Vec<String>,
    },
    /// Put a quarantined file back (the undo of quarantine).
    ReleaseQuarantine {
        #[command(flatten)]
        common: Common,
        /// The vault entry id (see `devices vault`).
        #[arg(long, required_unless_present = "sha256")]
        entry: Option<String>,
        /// Release every entry with this hash (with --fleet: on every device that holds it).
        #[arg(long)]
        sha256: Option<String>,
        /// Restore to this path instead of the original one.
        #[arg(long)]
        restore_path: Option<String>,
        /// Replace a different file at the destination.
        #[arg(long)]
        overwrite: bool,
    },
    /// Run an antivirus scan.
    Scan {
        #[command(flatten)]
        common: Common,
        /// quick, full or custom.
        #[arg(long, default_value = "quick")]
        mode: String,
        #[arg(long = "path")]
        paths: Vec<String>,
        #[arg(long = "exclude")]
        exclusions: Vec<String>,
    },
    RestrictExecution {
        #[command(flatten)]
        common: Common,
    },
    ReleaseExecution {
        #[command(flatten)]
        common: Common,
    },
    CollectPackage {
        #[command(flatten)]
        common: Common,
    },
    /// Upload a file from the device.
    RequestSample {
        #[command(flatten)]
        common: Common,
        /// Absolute path on the device.
        #[arg(long)]
        path: String,
    },
    /// Erase the agent's identity and revoke its certificate.
    Offboard {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Clone)]
pub(crate) struct ContainTarget {
    /// A managed device (id or hostname); or give --ip for an unmanaged address.
    pub(crate) device: Option<String>,
    /// An unmanaged IPv4 or IPv6 address.
    #[arg(long, conflicts_with = "device")]
    pub(crate) ip: Option<std::net::IpAddr>,
    /// The unmanaged target's MAC address, kept with it for the record.
    #[arg(long, requires = "ip")]
    pub(crate) mac: Option<String>,
    /// Why: required, and kept in the history.
    #[arg(long)]
    pub(crate) comment: String,
    /// Your ticket or case id.
    #[arg(long)]
    pub(crate) external_id: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum ActionsCmd {
    List(ListArgs),
    /// One action with its hop timeline and history.
    Show {
        id: String,
    },
    Approve(DecideArgs),
    /// Export the filtered list (every page of it) as CSV, as the Action center does.
    Export(ExportArgs),
    /// Reject pending actions (a comment is required).
    Reject(DecideArgs),
    /// Cancel actions not yet delivered, or stop running scans.
    Cancel(DecideArgs),
    /// Undo succeeded lasting actions (creates linked actions).
    Undo(DecideArgs),
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// Only actions awaiting approval.
    #[arg(long, conflicts_with = "history")]
    pub(crate) pending: bool,
    /// Everything but actions awaiting approval.
    #[arg(long)]
    pub(crate) history: bool,
    /// Only actions created in this window, e.g. 1d, 7d, 30d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) since: Option<Duration>,
    #[arg(long)]
    pub(crate) kind: Option<ActionKind>,
    #[arg(long)]
    pub(crate) status: Option<ActionStatus>,
    #[arg(long)]
    pub(crate) source: Option<ActionSource>,
    /// Device id or hostname.
    #[arg(long)]
    pub(crate) device: Option<String>,
    #[arg(long = "group")]
    pub(crate) device_group: Option<String>,
    #[arg(long)]
    pub(crate) requested_by: Option<String>,
    /// Only the children of this fleet-wide action (its devices' actions).
    #[arg(long)]
    pub(crate) parent: Option<u64>,
    /// Column to sort by (id, kind, status, source, requested_by, created_at, decided_by,
    /// decided_at, finished_at, comment, result_summary, device, device_group).
    #[arg(long, default_value = "id")]
    pub(crate) sort: String,
    /// Ascending (default descending).
    #[arg(long)]
    pub(crate) asc: bool,
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
    #[arg(long, default_value_t = 0)]
    pub(crate) offset: u32,
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// The list's filters and sort (its --limit and --offset do not apply).
    #[command(flatten)]
    pub(crate) list: ListArgs,
    /// Comma-separated columns (default: id, kind, device, device_group, source, status,
    /// requested_by, created_at, comment, decided_by, decided_at, finished_at, result_summary).
    #[arg(long)]
    pub(crate) columns: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub(crate) output: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub(crate) struct DecideArgs {
    #[arg(required = true)]
    pub(crate) ids: Vec<u64>,
    #[arg(long, default_value = "")]
    pub(crate) comment: String,
}

#[derive(Subcommand)]
pub(crate) enum ArtifactsCmd {
    /// Download an action's artifact, verifying its sha256.
    Download {
        action: u64,
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Which artifact (default: the action's only one).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum EnrollTokenCmd {
    Create {
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value = "24h")]
        expires_in: String,
        #[arg(long = "group", default_value = "default")]
        device_group: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum UsersCmd {
    /// Add a user; prints their API token once.
    Add {
        name: String,
        /// viewer, responder, approver, investigator or admin.
        #[arg(long)]
        role: String,
        /// Limit the role to these device groups (default: all).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    List,
    /// Set a user's password for the web Action center (admins: anyone's), read from the
    /// first line of standard input; ends the user's web sessions.
    SetPassword {
        name: String,
    },
    /// Disable a user: their API tokens and web sessions stop working until enabled again.
    Disable {
        name: String,
    },
    /// Enable a disabled user again (sessions ended by the disable stay ended).
    Enable {
        name: String,
    },
    /// Remove a user with their API tokens, sessions and preferences. The name can be added
    /// again later as a new user; no old credential works for it.
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCmd {
    /// List API tokens (never their secrets), revoked ones included.
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
    },
    /// A new API token for a user; prints it once.
    Create {
        user: String,
        /// How long it lives (e.g. 90d, 12h; at most 366d). Default: until revoked.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Revoke an API token by its id (from `token list`).
    Revoke { id: i64 },
    /// Revoke an API token and make a new one for the same user with the time it had left;
    /// prints the new one once.
    Rotate { id: i64 },
}

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Set the approval policy for a group (or * for all) and a kind (default: all kinds).
    Set {
        #[arg(long = "group", default_value = "*")]
        device_group: String,
        #[arg(long)]
        kind: Option<ActionKind>,
        #[arg(long, action = clap::ArgAction::Set)]
        require_approval: bool,
        #[arg(long, action = clap::ArgAction::Set)]
        distinct_approver: bool,
    },
    List,
}

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// Check the hash chain; exits 1 and names the first broken record if it is broken.
    Verify,
    /// Recent audit records (optionally for one action).
    List {
        #[arg(long)]
        action: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
pub(crate) enum RulesCmd {
    /// Upload a new rule set made of these files (.yar/.yara, .hdb/.hsb); it replaces the
    /// current one on every agent. Compile errors name the file and line.
    Upload {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// The rule-set versions, and which one each device enforces.
    List,
}

#[derive(Subcommand)]
pub(crate) enum RealtimeCmd {
    /// Turn it on or off for a group (or * for the default of every group without its own).
    Set {
        #[arg(long = "group", default_value = "*")]
        device_group: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Each group's setting and whether each device's protection is watching.
    List,
}

#[derive(Subcommand)]
pub(crate) enum AutomationCmd {
    /// Set a group's level (or * for the default of every group without its own).
    Set {
        #[arg(long = "group", default_value = "*")]
        device_group: String,
        /// full, semi or none.
        #[arg(long)]
        level: String,
    },
    List,
}
