//! Who may do what: roles with permissions, users and Unix groups mapped to
//! roles, and teams, from a TOML policy file (default `/etc/wfcg/policy.toml`).
//!
//! ```toml
//! [roles]                       # the four defaults; add or redefine roles here
//! owner = ["kill_own", "kill_force"]
//! admin = ["kill_any", "kill_force", "emergency_kill", "view_all"]
//! team_lead = ["kill_own", "kill_force", "kill_team_workflows"]
//! readonly = ["view_all"]
//!
//! default_role = "owner"        # for users mapped nowhere
//!
//! [users]                       # user name -> role
//! alice = "team_lead"
//! [groups]                      # Unix group name -> role
//! auditors = "readonly"
//!
//! [teams.build]                 # "@name" is a Unix group
//! members = ["bob", "@builders"]
//! leads = ["alice"]
//! ```
//!
//! root is always admin. With no file, every user is `owner` of their own runs.
//! A leaf module: identities and runs come in as plain data.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::api::KillMode;
use crate::diagnostics::line_of;

/// The largest policy file accepted.
pub const MAX_SIZE: u64 = 1024 * 1024;

/// Why a policy file cannot be used: the file, the line when there is one,
/// and what is wrong. Shown as `file:line: what`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {problem}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PolicyError {
    pub file: String,
    pub line: Option<usize>,
    pub problem: Box<PolicyProblem>,
}

/// What is wrong with a policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    #[error("{0}")]
    Unreadable(String),
    #[error("the file is {0} bytes; a policy may be at most {MAX_SIZE} bytes")]
    TooLarge(u64),
    #[error("not UTF-8 (byte {0})")]
    NotUtf8(usize),
    /// TOML syntax, or a key or value of the wrong kind.
    #[error("{0}")]
    Syntax(String),
    #[error("unknown permission {permission:?} in role {role:?} (known: {})", Permission::ALL.map(|p| p.as_str()).join(", "))]
    UnknownPermission { permission: String, role: String },
    #[error("unknown role {role:?} for {whose} (known: {})", .known.join(", "))]
    UnknownRole {
        role: String,
        whose: String,
        known: Vec<String>,
    },
    #[error(
        "user {user:?} is given role {role:?} here but role {other:?} through group {group:?} \
         in [groups]; give each user one role"
    )]
    TwoRoles {
        user: String,
        role: String,
        other: String,
        group: String,
    },
    #[error("team {0:?} lists an empty name")]
    EmptyTeamMember(String),
}

/// What a role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Kill runs one started.
    KillOwn,
    /// Kill with `--force` (on top of the right to kill the run).
    KillForce,
    /// Kill anybody's run.
    KillAny,
    /// Kill runs of a team one leads.
    KillTeamWorkflows,
    /// `--emergency`: force, no critical-section wait, also on unkillable runs.
    EmergencyKill,
    /// See every run and the whole audit trail.
    ViewAll,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::KillOwn,
        Permission::KillForce,
        Permission::KillAny,
        Permission::KillTeamWorkflows,
        Permission::EmergencyKill,
        Permission::ViewAll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::KillOwn => "kill_own",
            Permission::KillForce => "kill_force",
            Permission::KillAny => "kill_any",
            Permission::KillTeamWorkflows => "kill_team_workflows",
            Permission::EmergencyKill => "emergency_kill",
            Permission::ViewAll => "view_all",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is asking, as the kernel vouches for it (peer credentials) plus names from NSS.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub uid: u32,
    pub user: Option<String>,
    /// Names of the primary and supplementary groups.
    pub groups: Vec<String>,
}

/// What a run is, for decisions.
#[derive(Debug, Clone, Default)]
pub struct RunScope<'a> {
    pub owner_uid: u32,
    pub teams: &'a [String],
}

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    View,
    Kill { mode: KillMode },
}

/// A decision and the permission it rested on (or the one that was missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub permission: Option<Permission>,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Team {
    users: BTreeSet<String>,
    groups: BTreeSet<String>,
    lead_users: BTreeSet<String>,
    lead_groups: BTreeSet<String>,
}

impl Team {
    fn has(users: &BTreeSet<String>, groups: &BTreeSet<String>, id: &Identity) -> bool {
        id.user.as_ref().is_some_and(|u| users.contains(u))
            || id.groups.iter().any(|g| groups.contains(g))
    }
}

/// A loaded policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// What one user (never root) may hold of the agent.
    pub limits: Limits,
    roles: BTreeMap<String, BTreeSet<Permission>>,
    default_role: String,
    users: BTreeMap<String, String>,
    groups: BTreeMap<String, String>,
    teams: BTreeMap<String, Team>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    roles: BTreeMap<String, Vec<Spanned<String>>>,
    default_role: Option<Spanned<String>>,
    #[serde(default)]
    users: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    teams: BTreeMap<String, RawTeam>,
    #[serde(default)]
    limits: Limits,
}

/// Per-user limits (`[limits]`), so that no user can exhaust the agent for root or
/// for the others. Root is never limited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Live runs one user may have at once.
    pub max_live_runs: u32,
    /// Runs one user may start in a minute.
    pub max_starts_per_minute: u32,
    /// Connections one user may hold open to the agent's socket.
    pub max_connections: u32,
    /// Requests of one user the agent works on at once (the others wait their turn).
    pub max_busy_requests: u32,
    /// The TMPDIR sizes (`[tmpdir] size`) of one user's live runs together, in
    /// bytes with K, M, G or T: a start that would exceed it is refused.
    #[serde(deserialize_with = "size")]
    pub max_tmpdir_total: String,
    /// The size of each run's directory (`$WFCG_RUN_DIR`, a tmpfs of its own), in
    /// bytes with K, M, G or T. Applies to every run, root's too.
    #[serde(deserialize_with = "size")]
    pub run_dir_size: String,
    /// Free space on the state directory's filesystem kept for root: below it,
    /// users' starts are refused and their denied requests are only counted.
    #[serde(deserialize_with = "size")]
    pub state_reserve: String,
    /// Seconds of one window in which a user's repeated refused requests are
    /// written as one record with a count (1 to 3600).
    #[serde(deserialize_with = "window")]
    pub denial_window_secs: u32,
}

/// A coalescing window: 1 to 3600 seconds.
fn window<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1..=3600).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "denial_window_secs = {n}: 1 to 3600 expected"
        )));
    }
    Ok(n)
}

/// A size in bytes with K, M, G or T (as `[tmpdir] size`), refused when parsed otherwise.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if crate::tmpfs::size_bytes(&s).is_none() {
        return Err(serde::de::Error::custom(format!(
            "size {s:?}: bytes with K, M, G or T expected (e.g. \"64M\")"
        )));
    }
    Ok(s)
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_live_runs: 256,
            max_starts_per_minute: 240,
            max_connections: 64,
            max_busy_requests: 8,
            max_tmpdir_total: "32G".into(),
            state_reserve: "64M".into(),
            run_dir_size: "4M".into(),
            denial_window_secs: 60,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    #[serde(default)]
    members: Vec<Spanned<String>>,
    #[serde(default)]
    leads: Vec<Spanned<String>>,
}

fn builtin_roles() -> BTreeMap<String, BTreeSet<Permission>> {
    use Permission::*;
    [
        ("owner", vec![KillOwn, KillForce]),
        ("admin", vec![KillAny, KillForce, EmergencyKill, ViewAll]),
        ("team_lead", vec![KillOwn, KillForce, KillTeamWorkflows]),
        ("readonly", vec![ViewAll]),
    ]
    .into_iter()
    .map(|(n, p)| (n.to_string(), p.into_iter().collect()))
    .collect()
}

impl Default for Policy {
    /// No file: the built-in roles, everybody `owner` (root is admin regardless).
    fn default() -> Policy {
        Policy {
            limits: Limits::default(),
            roles: builtin_roles(),
            default_role: "owner".into(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            teams: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// Loads a policy file; errors read `file:line: what is wrong`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let error = |line, problem| PolicyError {
            file: name.clone(),
            line,
            problem: Box::new(problem),
        };
        let unreadable = |e: std::io::Error| error(None, PolicyProblem::Unreadable(e.to_string()));
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        if meta.len() > MAX_SIZE {
            return Err(error(None, PolicyProblem::TooLarge(meta.len())));
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
            error(Some(line_of(&text, at)), PolicyProblem::NotUtf8(at))
        })?;
        Policy::parse_with(&text, &name, crate::users::groups_of_user)
    }

    /// Parses policy text; `name` is the file errors name.
    pub fn parse(text: &str, name: &str) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, name, |_| Vec::new())
    }

    /// Parses policy text; `groups_of` names the groups of a user, to refuse a user
    /// given one role in `[users]` and another through a group in `[groups]`.
    pub fn parse_with(
        text: &str,
        name: &str,
        groups_of: impl Fn(&str) -> Vec<String>,
    ) -> Result<Policy, PolicyError> {
        let at = |span: Option<std::ops::Range<usize>>, problem| PolicyError {
            file: name.to_string(),
            line: span.map(|s| line_of(text, s.start)),
            problem: Box::new(problem),
        };
        let raw: RawPolicy = toml::from_str(text)
            .map_err(|e| at(e.span(), PolicyProblem::Syntax(e.message().to_string())))?;
        let mut policy = Policy {
            limits: raw.limits,
            ..Policy::default()
        };
        for (role, perms) in raw.roles {
            let mut set = BTreeSet::new();
            for p in perms {
                let perm = Permission::parse(p.get_ref()).ok_or_else(|| {
                    at(
                        Some(p.span()),
                        PolicyProblem::UnknownPermission {
                            permission: p.get_ref().clone(),
                            role: role.clone(),
                        },
                    )
                })?;
                set.insert(perm);
            }
            policy.roles.insert(role, set);
        }
        let check_role = |role: &Spanned<String>, whose: String| {
            if policy.roles.contains_key(role.get_ref()) {
                Ok(role.get_ref().clone())
            } else {
                Err(at(
                    Some(role.span()),
                    PolicyProblem::UnknownRole {
                        role: role.get_ref().clone(),
                        whose,
                        known: policy.roles.keys().cloned().collect(),
                    },
                ))
            }
        };
        if let Some(role) = &raw.default_role {
            policy.default_role = check_role(role, "default_role".into())?;
        }
        let mut users = BTreeMap::new();
        for (user, role) in &raw.users {
            users.insert(user.clone(), check_role(role, format!("user {user:?}"))?);
        }
        let mut groups = BTreeMap::new();
        for (group, role) in &raw.groups {
            groups.insert(group.clone(), check_role(role, format!("group {group:?}"))?);
        }
        for (user, role) in &users {
            for group in groups_of(user) {
                if let Some(other) = groups.get(&group).filter(|r| *r != role) {
                    let span = raw.users[user].span();
                    return Err(at(
                        Some(span),
                        PolicyProblem::TwoRoles {
                            user: user.clone(),
                            role: role.clone(),
                            other: other.clone(),
                            group,
                        },
                    ));
                }
            }
        }
        policy.users = users;
        policy.groups = groups;
        for (team_name, raw_team) in raw.teams {
            let mut team = Team::default();
            for (list, users, groups) in [
                (&raw_team.members, &mut team.users, &mut team.groups),
                (&raw_team.leads, &mut team.lead_users, &mut team.lead_groups),
            ] {
                for spanned in list {
                    let entry = spanned.get_ref();
                    match entry.strip_prefix('@') {
                        _ if entry.is_empty() || entry == "@" => {
                            return Err(at(
                                Some(spanned.span()),
                                PolicyProblem::EmptyTeamMember(team_name.clone()),
                            ));
                        }
                        Some(g) => groups.insert(g.to_string()),
                        None => users.insert(entry.clone()),
                    };
                }
            }
            policy.teams.insert(team_name, team);
        }
        Ok(policy)
    }

    /// The roles of an identity: root is admin; otherwise the user's own mapping,
    /// else those of its groups, else the default role.
    pub fn roles(&self, id: &Identity) -> Vec<String> {
        if id.uid == 0 {
            return vec!["admin".into()];
        }
        if let Some(role) = id.user.as_ref().and_then(|u| self.users.get(u)) {
            return vec![role.clone()];
        }
        let from_groups: BTreeSet<String> = id
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g).cloned())
            .collect();
        if from_groups.is_empty() {
            vec![self.default_role.clone()]
        } else {
            from_groups.into_iter().collect()
        }
    }

    /// The permissions of an identity.
    pub fn permissions(&self, id: &Identity) -> BTreeSet<Permission> {
        if id.uid == 0 {
            return Permission::ALL.into_iter().collect();
        }
        self.roles(id)
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .copied()
            .collect()
    }

    /// The teams an identity is a member or lead of (a run started by it belongs to these).
    pub fn teams_of(&self, id: &Identity) -> Vec<String> {
        self.teams
            .iter()
            .filter(|(_, t)| {
                Team::has(&t.users, &t.groups, id) || Team::has(&t.lead_users, &t.lead_groups, id)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether an identity leads any of `teams`.
    fn leads_any(&self, id: &Identity, teams: &[String]) -> bool {
        teams.iter().any(|name| {
            self.teams
                .get(name)
                .is_some_and(|t| Team::has(&t.lead_users, &t.lead_groups, id))
        })
    }

    /// Decides whether `id` may do `action` to a run.
    pub fn decide(&self, id: &Identity, action: Action, run: &RunScope<'_>) -> Decision {
        let perms = self.permissions(id);
        let who = id.user.clone().unwrap_or_else(|| format!("uid {}", id.uid));
        let own = run.owner_uid == id.uid;
        let lead = self.leads_any(id, run.teams);
        let allow = |p: Permission| Decision {
            allowed: true,
            permission: Some(p),
            message: format!("{who} may, by {p}"),
        };
        let deny = |p: Permission, what: &str| Decision {
            allowed: false,
            permission: Some(p),
            message: format!(
                "not permitted: {what} needs {p}; {who} has role(s) {}",
                self.roles(id).join(", ")
            ),
        };
        // The right to act on this run at all, and the permission it rests on.
        let base = if own {
            Permission::KillOwn
        } else if perms.contains(&Permission::KillAny) {
            Permission::KillAny
        } else if lead {
            Permission::KillTeamWorkflows
        } else {
            Permission::KillAny
        };
        match action {
            Action::View => {
                if own {
                    allow(Permission::KillOwn)
                } else if perms.contains(&Permission::ViewAll) {
                    allow(Permission::ViewAll)
                } else if lead {
                    allow(Permission::KillTeamWorkflows)
                } else {
                    deny(Permission::ViewAll, "seeing another user's run")
                }
            }
            Action::Kill {
                mode: KillMode::Emergency,
            } => {
                if perms.contains(&Permission::EmergencyKill) {
                    allow(Permission::EmergencyKill)
                } else {
                    deny(Permission::EmergencyKill, "an emergency kill")
                }
            }
            Action::Kill { mode } => {
                if !perms.contains(&base) {
                    let what = if own {
                        "killing one's own run"
                    } else {
                        "killing another user's run (kill_team_workflows would do for a team one leads)"
                    };
                    return deny(base, what);
                }
                if mode.is_forced() && !perms.contains(&Permission::KillForce) {
                    return deny(Permission::KillForce, "a force kill");
                }
                allow(base)
            }
        }
    }
}

#[cfg(test)]
mod tests;
