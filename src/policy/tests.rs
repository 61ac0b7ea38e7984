use super::*;

const EXAMPLE: &str = r#"
default_role = "owner"

[users]
alice = "team_lead"
carol = "readonly"
dave = "admin"

[groups]
auditors = "readonly"

[teams.build]
members = ["bob", "@builders"]
leads = ["alice"]
"#;

fn id(uid: u32, user: &str, groups: &[&str]) -> Identity {
    Identity {
        uid,
        user: Some(user.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn kill(force: bool) -> Action {
    Action::Kill {
        mode: crate::api::KillMode::from_flags(force, false),
    }
}

#[test]
fn the_seed_roles_decide_as_documented() {
    let p = Policy::parse(EXAMPLE, "policy.toml").unwrap();
    let (alice, bob, carol, dave, erin) = (
        id(1001, "alice", &[]),
        id(1002, "bob", &[]),
        id(1003, "carol", &[]),
        id(1004, "dave", &[]),
        id(1005, "erin", &["builders"]),
    );
    let team = vec!["build".to_string()];
    let bobs_run = RunScope {
        owner_uid: 1002,
        teams: &team,
    };
    let outsiders_run = RunScope {
        owner_uid: 1999,
        teams: &[],
    };
    assert_eq!(p.teams_of(&bob), team);
    assert_eq!(p.teams_of(&erin), team);
    // An owner kills their own run, with --force too.
    assert!(p.decide(&bob, kill(true), &bobs_run).allowed);
    // Not another's.
    let d = p.decide(&bob, kill(false), &outsiders_run);
    assert!(
        !d.allowed && d.permission == Some(Permission::KillAny),
        "{d:?}"
    );
    // A team lead kills a member's run, not an outsider's.
    let d = p.decide(&alice, kill(false), &bobs_run);
    assert!(
        d.allowed && d.permission == Some(Permission::KillTeamWorkflows),
        "{d:?}"
    );
    assert!(!p.decide(&alice, kill(false), &outsiders_run).allowed);
    // readonly sees everything and kills nothing.
    assert!(p.decide(&carol, Action::View, &outsiders_run).allowed);
    assert!(!p.decide(&carol, kill(false), &outsiders_run).allowed);
    // admin does anything; root is admin.
    let emergency = Action::Kill {
        mode: crate::api::KillMode::Emergency,
    };
    assert!(p.decide(&dave, emergency, &outsiders_run).allowed);
    assert!(p.decide(&id(0, "root", &[]), emergency, &bobs_run).allowed);
    assert!(!p.decide(&bob, emergency, &bobs_run).allowed);
    // Groups map to roles.
    assert_eq!(p.roles(&id(1006, "frank", &["auditors"])), vec!["readonly"]);
    assert_eq!(p.roles(&id(1007, "gina", &[])), vec!["owner"]);
}

#[test]
fn force_needs_kill_force() {
    let text = "[roles]\nowner = [\"kill_own\"]\n";
    let p = Policy::parse(text, "p").unwrap();
    let bob = id(1002, "bob", &[]);
    let mine = RunScope {
        owner_uid: 1002,
        teams: &[],
    };
    assert!(p.decide(&bob, kill(false), &mine).allowed);
    let d = p.decide(&bob, kill(true), &mine);
    assert!(!d.allowed && d.message.contains("kill_force"), "{d:?}");
}

#[test]
fn bad_policies_name_the_line_and_the_problem() {
    let cases = [
        (
            "[roles]\nowner = [\"kill_own\", \"kill_everything\"]\n",
            "p:2:",
            "kill_everything",
        ),
        ("[users]\nalice = \"overlord\"\n", "p:2:", "overlord"),
        ("\n\n[bogus]\nx = 1\n", "p:3:", "bogus"),
        ("default_role = \"nobody\"\n", "p:1:", "nobody"),
        (
            "[users]\nalice = \"owner\"\nalice = \"admin\"\n",
            "p:3:",
            "duplicate",
        ),
        (
            "[teams.build]\nleads = [\"alice\"]\nmembers = [\"bob\", \"@\"]\n",
            "p:3:",
            "empty name",
        ),
    ];
    for (text, line, word) in cases {
        let err = Policy::parse(text, "p").unwrap_err().to_string();
        assert!(
            err.starts_with(line) && err.contains(word),
            "{text:?} -> {err}"
        );
    }
}

#[test]
fn a_user_with_two_roles_is_refused() {
    let text = "[users]\nalice = \"owner\"\n[groups]\nops = \"admin\"\nstaff = \"owner\"\n";
    let groups = |u: &str| -> Vec<String> {
        match u {
            "alice" => vec!["staff".into(), "ops".into()],
            _ => vec![],
        }
    };
    let err = Policy::parse_with(text, "p", groups)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("p:2:") && err.contains("ops"), "{err}");
    // The same role both ways is no conflict.
    let text = text.replace("ops = \"admin\"", "ops = \"owner\"");
    assert!(Policy::parse_with(&text, "p", groups).is_ok());
}

#[test]
fn oversized_and_non_utf8_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 10 * 1024 * 1024]).unwrap();
    assert!(
        Policy::load(&big)
            .unwrap_err()
            .to_string()
            .contains("at most")
    );
    let bin = dir.path().join("bin.toml");
    std::fs::write(&bin, b"[users]\nalice = \"owner\"\n\xff\xfe\n").unwrap();
    let err = Policy::load(&bin).unwrap_err().to_string();
    assert!(
        err.contains("bin.toml:3:") && err.contains("UTF-8"),
        "{err}"
    );
}

#[test]
fn errors_are_typed_with_the_file_and_line() {
    let err = Policy::parse("[users]\n\nbob = \"boss\"\n", "p.toml").unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("p.toml", Some(3)));
    assert!(
        matches!(&*err.problem, PolicyProblem::UnknownRole { role, whose, .. }
            if role == "boss" && whose == "user \"bob\""),
        "{err:?}"
    );
    let err = Policy::parse("[roles]\nx = [\"fly\"]\n", "p.toml").unwrap_err();
    assert_eq!(
        *err.problem,
        PolicyProblem::UnknownPermission {
            permission: "fly".into(),
            role: "x".into()
        }
    );
    let err = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert!(matches!(*err.problem, PolicyProblem::Unreadable(_)) && err.line.is_none());
}

#[test]
fn the_run_dir_size_is_a_size_and_defaults_to_4m() {
    assert_eq!(Policy::default().limits.run_dir_size, "4M");
    let p = Policy::parse("[limits]\nrun_dir_size = \"16M\"\n", "policy.toml").unwrap();
    assert_eq!(p.limits.run_dir_size, "16M");
    for bad in ["0", "4MB", "-1", "max"] {
        let text = format!("[limits]\nrun_dir_size = {bad:?}\n");
        let err = Policy::parse(&text, "policy.toml").unwrap_err().to_string();
        assert!(err.contains("K, M, G or T"), "{bad}: {err}");
    }
}
