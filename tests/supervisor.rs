//! End-to-end behaviour of the real binary over real stand-in children: lifecycle, restart
//! policy, signals, PID 1 and subreaper duties, configuration errors, least privilege.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const READY: Duration = Duration::from_secs(20);
const EXIT: Duration = Duration::from_secs(15);

#[test]
fn all_twelve_regions_become_ready_and_sigterm_stops_them() {
    let mut sup = Sup::start(&[]);
    sup.wait_ready(READY);
    let base = sup.ports.child_base();
    let lines = sup.lines();
    for (i, region) in REGIONS.iter().enumerate() {
        let port_line = format!("[{region}] PORT={}", base + i as u16);
        assert!(lines.contains(&port_line), "missing {port_line:?}");
        assert_eq!(sup.events_matching(region, "ready").len(), 1, "{region}");
    }
    let (code, body) = sup.get("/healthz").unwrap();
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["regions"].as_array().unwrap().len(), 12);
    assert_eq!(sup.get("/livez").unwrap().0, 200);

    let pids = sup.all_child_pids();
    assert_eq!(pids.len(), 12);
    let t = Instant::now();
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(EXIT);
    let took = t.elapsed();
    assert_eq!(exit_code(status), Some(0), "{}", sup.tail(20));
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert!(wait_gone(&pids, Duration::from_secs(2)).is_empty());
    let stopped = sup.events().into_iter().find(|e| e["message"] == "stopped").expect("a final event");
    assert_eq!(stopped["exit_code"], 0);
}

#[test]
fn a_killed_child_is_restarted_and_counted() {
    let sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1,eu-west-1")]);
    sup.wait_ready(READY);
    let (_, old) = sup.child_pids().into_iter().find(|(r, _)| r == "eu-west-1").unwrap();
    send_signal(old, libc::SIGKILL);
    sup.wait_for("eu-west-1 restarted and ready", READY, |s| {
        s.events_matching("eu-west-1", "ready").len() == 2 && s.get("/healthz").is_some_and(|(c, _)| c == 200)
    });
    let (_, new) = sup.child_pids().into_iter().find(|(r, _)| r == "eu-west-1").unwrap();
    assert_ne!(new, old);
    let exits: Vec<_> = sup.events().into_iter().filter(|e| e["message"] == "killed by SIGKILL").collect();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0]["region"], "eu-west-1");
    assert_eq!(sup.events_matching("eu-west-1", "restarting in 100ms (attempt 1/3)").len(), 1);
    let (_, health) = sup.get("/healthz").unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let eu =
        health["regions"].as_array().unwrap().iter().find(|r| r["region"] == "eu-west-1").unwrap().clone();
    assert_eq!(eu["restarts"], 1);
    assert_eq!(eu["last_exit"], "killed by SIGKILL");
    let (_, metrics) = sup.get("/metrics").unwrap();
    assert!(metrics.contains("supervisor_region_restarts_total{region=\"eu-west-1\"} 1"), "{metrics}");
    assert!(metrics.contains("supervisor_region_restarts_total{region=\"us-east-1\"} 0"), "{metrics}");
}

#[test]
fn a_crash_loop_gives_up_with_exit_1_and_leaves_nothing_running() {
    let mut sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1,us-west-2,eu-west-1"),
        ("SUPERVISOR_MAX_RESTARTS", "2"),
        ("SUPERVISOR_RESTART_BACKOFF", "50ms"),
        ("STANDIN_CRASH_AFTER", "us-west-2@300ms"),
    ]);
    let status = sup.wait_exit(Duration::from_secs(30));
    assert_eq!(exit_code(status), Some(1), "{}", sup.tail(30));
    let give_up = sup.events().into_iter().find(|e| e["level"] == "error").expect("a give-up error");
    assert_eq!(give_up["region"], "us-west-2");
    let message = give_up["message"].as_str().unwrap();
    assert!(message.contains("exited with status 3"), "{message}");
    let last = give_up["last_lines"].as_array().unwrap();
    assert!(!last.is_empty() && last.len() <= 10);
    assert!(last.iter().any(|l| l.as_str().unwrap().contains("simulated crash")), "{last:?}");
    assert_eq!(sup.events_matching("us-west-2", "started").len(), 3, "initial start + 2 restarts");
    let pids = sup.all_child_pids();
    assert!(wait_gone(&pids, Duration::from_secs(2)).is_empty(), "a stand-in outlived the supervisor");
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
    let mut sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1,ap-south-1"),
        ("SUPERVISOR_SHUTDOWN_GRACE", "700ms"),
        ("STANDIN_IGNORE_SIGTERM", "ap-south-1@1"),
    ]);
    sup.wait_ready(READY);
    let t = Instant::now();
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(EXIT);
    let took = t.elapsed();
    assert_eq!(exit_code(status), Some(0));
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(sup.events_matching("ap-south-1", "still running after 700ms: killing").len(), 1);
    assert_eq!(sup.events_matching("ap-south-1", "killed by SIGKILL").len(), 1);
    assert_eq!(sup.events_matching("us-east-1", "exited with status 0").len(), 1);
}

#[test]
fn a_second_sigterm_kills_at_once() {
    let mut sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1"),
        ("SUPERVISOR_SHUTDOWN_GRACE", "60s"),
        ("STANDIN_IGNORE_SIGTERM", "1"),
    ]);
    sup.wait_ready(READY);
    sup.signal(libc::SIGTERM);
    sup.wait_for("the child to ignore SIGTERM", EXIT, |s| {
        s.lines().iter().any(|l| l.contains("ignoring the stop signal"))
    });
    let t = Instant::now();
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(EXIT);
    assert_eq!(exit_code(status), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(sup.events_matching("us-east-1", "killed by SIGKILL").len(), 1);
}

#[test]
fn usr1_and_usr2_reach_every_child() {
    let sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1,eu-west-1,sa-east-1")]);
    sup.wait_ready(READY);
    for (sig, name) in [(libc::SIGUSR1, "SIGUSR1"), (libc::SIGUSR2, "SIGUSR2")] {
        sup.signal(sig);
        sup.wait_for(name, EXIT, |s| {
            let got: Vec<String> = s
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["signal"] == name)
                .map(|v| v["region"].as_str().unwrap_or("").to_string())
                .collect();
            ["us-east-1", "eu-west-1", "sa-east-1"].iter().all(|r| got.iter().filter(|g| g == r).count() == 1)
        });
    }
    assert_eq!(sup.child_pids().len(), 3, "forwarding must not restart anything");
}

/// SIGHUP is a rolling restart (SPEC "Signals and PID 1"): every region gets a new child, one
/// at a time in table order, and none of it is a failure. No child ever sees the SIGHUP.
#[test]
fn sighup_restarts_the_regions_one_at_a_time_in_table_order() {
    let mut sup = Sup::start(&[("SUPERVISOR_REGIONS", "sa-east-1,us-east-1,eu-west-1")]);
    sup.wait_ready(READY);
    let before = sup.child_pids();
    sup.signal(libc::SIGHUP);
    sup.wait_for("rolling restart: done", READY, |s| {
        s.events().iter().any(|e| e["message"] == "rolling restart: done")
    });
    let events = sup.events();
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e["message"] == "rolling restart: restarting")
        .filter_map(|e| e["region"].as_str())
        .collect();
    assert_eq!(order, ["us-east-1", "eu-west-1", "sa-east-1"]);
    // The next region is stopped only once the one before is ready again.
    let at = |region: &str, message: &str| {
        events.iter().rposition(|e| e["region"] == region && e["message"] == message).unwrap()
    };
    assert!(at("us-east-1", "ready") < at("eu-west-1", "rolling restart: restarting"));
    assert!(at("eu-west-1", "ready") < at("sa-east-1", "rolling restart: restarting"));
    let after = sup.child_pids();
    for (region, pid) in &before {
        assert!(!after.contains(&(region.clone(), *pid)), "{region} kept pid {pid}");
    }
    assert!(!sup.lines().iter().any(|l| l.contains("\"signal\":\"SIGHUP\"")), "a child saw SIGHUP");
    assert!(!sup.lines().iter().any(|l| l.contains("failure")), "{}", sup.tail(30));
    let (_, health) = sup.health().unwrap();
    assert!(health.iter().all(|r| r.state == "ready" && r.restarts == 1), "{health:?}");
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));
}

/// A stop however early (from the moment the handlers are in place) is logged like any
/// other: `stopping all regions` and `stopped`, exit 0, no child left.
#[test]
fn a_stop_right_after_the_start_is_logged() {
    for delay_ms in [1u64, 2, 5, 20] {
        let ports = Ports::new();
        let mut sup = Sup::spawn(command(&ports, &[]), ports);
        // Before its handlers exist the default action would end it: that is no stop to log.
        let t = Instant::now();
        while !catches(sup.pid, libc::SIGTERM) {
            assert!(t.elapsed() < EXIT, "handlers never installed");
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        sup.signal(libc::SIGTERM);
        assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0), "{delay_ms} ms");
        let messages: Vec<String> =
            sup.events().iter().filter_map(|e| e["message"].as_str().map(str::to_string)).collect();
        assert!(
            messages.iter().any(|m| m == "stopping all regions: received SIGTERM"),
            "{delay_ms} ms: {messages:?}"
        );
        assert_eq!(messages.last().map(String::as_str), Some("stopped"), "{delay_ms} ms: {messages:?}");
        assert!(wait_gone(&sup.all_child_pids(), EXIT).is_empty(), "{delay_ms} ms: children left");
    }
}

#[test]
fn sigint_and_sigquit_stop_gracefully_too() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        let mut sup = Sup::start(&[("SUPERVISOR_REGIONS", "ca-central-1")]);
        sup.wait_ready(READY);
        sup.signal(sig);
        assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));
        assert_eq!(sup.events_matching("ca-central-1", "exited with status 0").len(), 1);
    }
}

#[test]
fn a_child_never_ready_is_restarted_after_the_startup_timeout() {
    let mut sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1,us-gov-east-1"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "500ms"),
        ("SUPERVISOR_MAX_RESTARTS", "1"),
        ("SUPERVISOR_RESTART_BACKOFF", "50ms"),
        ("STANDIN_NEVER_READY", "us-gov-east-1@1"),
    ]);
    let status = sup.wait_exit(Duration::from_secs(30));
    assert_eq!(exit_code(status), Some(1));
    let errors: Vec<_> = sup.events().into_iter().filter(|e| e["level"] == "error").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["region"], "us-gov-east-1");
    assert!(errors[0]["message"].as_str().unwrap().contains("not ready within 500ms"));
    assert_eq!(sup.events_matching("us-gov-east-1", "started").len(), 2);
}

#[test]
fn failing_liveness_probes_restart_a_ready_child() {
    let sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "eu-west-1"),
        ("SUPERVISOR_PROBE_INTERVAL", "100ms"),
        ("SUPERVISOR_LIVENESS_FAILURES", "2"),
        ("STANDIN_UNHEALTHY_AFTER", "1s"),
    ]);
    sup.wait_for("a liveness restart", READY, |s| {
        s.events_matching("eu-west-1", "failed 2 consecutive health probes").len() == 1
    });
    sup.wait_for("the restarted child", READY, |s| s.events_matching("eu-west-1", "started").len() == 2);
}

#[test]
fn a_sigkilled_supervisor_leaves_no_child_running() {
    let mut sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1,us-west-2,eu-west-1,us-west-1")]);
    sup.wait_ready(READY);
    let pids = sup.all_child_pids();
    assert_eq!(pids.len(), 4);
    sup.signal(libc::SIGKILL);
    sup.wait_exit(EXIT);
    assert_eq!(
        wait_gone(&pids, Duration::from_secs(3)),
        Vec::<i32>::new(),
        "children outlived the supervisor"
    );
}

#[test]
fn orphans_are_reaped_by_the_subreaper() {
    let mut sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1,eu-west-1"), ("STANDIN_ORPHANS", "3")]);
    sup.wait_ready(READY);
    // The orphans sleep 100ms, exit, and are re-parented to us as the nearest subreaper.
    std::thread::sleep(Duration::from_millis(600));
    let zombies: Vec<_> = children_of(sup.pid).into_iter().filter(|(_, s)| *s == 'Z').collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));
    let stopped = sup.events().into_iter().find(|e| e["message"] == "stopped").unwrap();
    assert_eq!(stopped["orphans_reaped"], 6, "{stopped}");
}

#[test]
fn as_pid_1_it_reaps_orphans_and_stops_on_sigterm() {
    require_root("as_pid_1_it_reaps_orphans_and_stops_on_sigterm");
    let ports = Ports::new();
    let inner = command(&ports, &[("STANDIN_ORPHANS", "2")]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", SUPERVISOR]);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut sup = Sup::spawn(cmd, ports);
    sup.wait_ready(READY);
    // The supervisor is unshare's only child; it is PID 1 of the new namespace.
    let pid1 = children_of(sup.pid).first().expect("the supervisor under unshare").0;
    let started = sup.events().into_iter().find(|e| e["message"] == "supervising 12 regions").unwrap();
    assert_eq!(started["pid"], 1, "not PID 1 in its namespace");
    std::thread::sleep(Duration::from_millis(600));
    let zombies: Vec<_> = children_of(pid1).into_iter().filter(|(_, s)| *s == 'Z').collect();
    assert!(zombies.is_empty(), "zombies under PID 1: {zombies:?}");
    let t = Instant::now();
    send_signal(pid1, libc::SIGTERM);
    let status = sup.wait_exit(EXIT);
    assert_eq!(exit_code(status), Some(0), "{}", sup.tail(20));
    assert!(t.elapsed() < Duration::from_secs(5));
    let stopped = sup.events().into_iter().find(|e| e["message"] == "stopped").unwrap();
    assert_eq!(stopped["orphans_reaped"], 24, "{stopped}");
    assert_eq!(sup.events().iter().filter(|e| e["message"] == "exited with status 0").count(), 12);
}

#[test]
fn children_get_their_environment_and_no_stray_descriptors() {
    let ports = Ports::new();
    let mut cmd = command(&ports, &[("SUPERVISOR_REGIONS", "sa-east-1"), ("FINFOCUS_LOG_LEVEL", "debug")]);
    // Hand the supervisor an inheritable descriptor 7, as a careless parent might.
    // SAFETY: dup2 on fd 2 in the forked child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::dup2(2, 7);
            Ok(())
        });
    }
    let sup = Sup::spawn(cmd, ports);
    sup.wait_ready(READY);
    let line = sup.lines().into_iter().find(|l| l.contains("starting aws-public pricing plugin")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["inherited_fds"], serde_json::json!([]), "{line}");
    assert_eq!(v["plugin_region"], "sa-east-1");
    let (_, pid) = sup.child_pids()[0].clone();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: Vec<String> = env.split(|&b| b == 0).map(|e| String::from_utf8_lossy(e).into_owned()).collect();
    let port = (sup.ports.child_base() + 8).to_string();
    for want in [
        format!("FINFOCUS_PLUGIN_PORT={port}"),
        format!("PORT={port}"),
        "REGION=sa-east-1".into(),
        "FINFOCUS_PLUGIN_WEB_ENABLED=true".into(),
        "FINFOCUS_PLUGIN_HEALTH_ENDPOINT=true".into(),
        "FINFOCUS_LOG_LEVEL=debug".into(),
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    // Its own process group, stdin from /dev/null.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(fields[2], pid.to_string(), "pgid");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap().to_str(), Some("/dev/null"));
}

#[test]
fn runs_unprivileged_in_a_read_only_directory() {
    require_root("runs_unprivileged_in_a_read_only_directory");
    let dir = std::env::temp_dir().join(format!("rs-ro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (src, name) in [(SUPERVISOR, "region-supervisor"), (STANDIN, "finfocus-standin")] {
        std::fs::copy(src, dir.join(name)).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let ports = Ports::new();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65532", "--regid=65532", "--clear-groups", "--"]).arg(dir.join("region-supervisor"));
    let inner = command(&ports, &[("SUPERVISOR_REGIONS", "us-east-1,eu-west-1")]);
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.env("SUPERVISOR_COMMAND", dir.join("finfocus-standin")).current_dir(&dir);
    let mut sup = Sup::spawn(cmd, ports);
    sup.wait_ready(READY);
    let (_, pid) = sup.child_pids()[0].clone();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:") && l.contains("65532")),
        "child not running as 65532"
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(files.len(), 2, "wrote files: {files:?}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs the binary to completion with `env`; returns (exit code, stdout, stderr).
fn run_once(ports: &Ports, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let out = command(ports, env).args(args).stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn configuration_errors_exit_2_before_anything_starts() {
    let ports = Ports::new();
    let not_executable = std::env::temp_dir().join(format!("rs-plain-file-{}", std::process::id()));
    std::fs::write(&not_executable, "not a program").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_executable = not_executable.to_str().unwrap().to_string();
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (
            &[("SUPERVISOR_REGIONS", "us-east-1,moon-1")],
            &[],
            "SUPERVISOR_REGIONS: unknown region \"moon-1\" (valid regions: us-east-1, us-west-2",
        ),
        (&[("SUPERVISOR_REGIONS", "eu-west-1,eu-west-1")], &[], "region \"eu-west-1\" is listed twice"),
        (
            &[("SUPERVISOR_RESTART_BACKOFF", "5 seconds")],
            &[],
            "SUPERVISOR_RESTART_BACKOFF: \"5 seconds\" is not a duration (use 250ms, 5s, 2m",
        ),
        (&[("SUPERVISOR_MAX_LINE", "64kb")], &[], "SUPERVISOR_MAX_LINE: \"64kb\" is not a size"),
        (&[("SUPERVISOR_PORT_BASE", "65530")], &[], "above 65535"),
        (
            &[("SUPERVISOR_PORT_BASE", "http")],
            &[],
            "SUPERVISOR_PORT_BASE: \"http\" is not a port number (1..65535)",
        ),
        (
            &[("SUPERVISOR_COMMAND", "/nonexistent/plugin-{region}")],
            &[],
            "program \"/nonexistent/plugin-us-east-1\" (us-east-1) does not exist",
        ),
        (&[("SUPERVISOR_COMMAND", "no-such-plugin-anywhere")], &[], "is not found in PATH"),
        (&[("SUPERVISOR_COMMAND", &not_executable)], &[], "is not executable by this user"),
        (&[("SUPERVISOR_LOG_FORMAT", "xml")], &[], "(use inject or json)"),
        (&[], &["--frobnicate"], "unknown flag \"--frobnicate\" (see --help)"),
        (&[], &["--max-restarts", "many"], "--max-restarts: \"many\" is not a whole number"),
    ];
    for (env, args, want) in cases {
        let (code, stdout, stderr) = run_once(&ports, env, args);
        assert_eq!(code, Some(2), "{env:?} {args:?}: {stderr}");
        assert!(stderr.contains(want), "{env:?}: want {want:?} in\n{stderr}");
        assert!(stderr.starts_with("region-supervisor: "), "{stderr}");
        assert!(stdout.is_empty(), "something started: {stdout}");
    }
    std::fs::remove_file(&not_executable).unwrap();
}

#[test]
fn every_configuration_problem_is_reported_at_once() {
    let ports = Ports::new();
    let (code, _, stderr) = run_once(
        &ports,
        &[
            ("SUPERVISOR_REGIONS", "nowhere-1"),
            ("SUPERVISOR_PROBE_INTERVAL", "often"),
            ("QUIET_HEALTHCHECK", "sure"),
        ],
        &[],
    );
    assert_eq!(code, Some(2));
    for want in
        ["SUPERVISOR_REGIONS", "SUPERVISOR_PROBE_INTERVAL", "QUIET_HEALTHCHECK", "nothing was started"]
    {
        assert!(stderr.contains(want), "{want} missing in\n{stderr}");
    }
}

#[test]
fn a_taken_region_port_or_metrics_address_is_refused() {
    let ports = Ports::new();
    let taken = std::net::TcpListener::bind(("127.0.0.1", ports.base + 2)).unwrap();
    let metrics = std::net::TcpListener::bind(("127.0.0.1", ports.metrics())).unwrap();
    let child = std::net::TcpListener::bind(("127.0.0.1", ports.child_base() + 5)).unwrap();
    let (code, stdout, stderr) = run_once(&ports, &[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "SUPERVISOR_RELAY_ADDR: cannot listen on 0.0.0.0:{} for region eu-west-1",
            ports.base + 2
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "SUPERVISOR_CHILD_PORT_BASE: port {} of region ap-northeast-1 is not free on 127.0.0.1",
            ports.child_base() + 5
        )),
        "{stderr}"
    );
    // Without the relay the child itself listens on the region port.
    let (code, _, stderr) = run_once(&ports, &[("SUPERVISOR_RELAY_ADDR", "off")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "SUPERVISOR_PORT_BASE: port {} of region eu-west-1 is not free on 127.0.0.1",
            ports.base + 2
        )),
        "{stderr}"
    );
    drop(child);
    assert!(
        stderr.contains(&format!("SUPERVISOR_METRICS_ADDR: cannot listen on 127.0.0.1:{}", ports.metrics())),
        "{stderr}"
    );
    assert!(stdout.is_empty());
    drop((taken, metrics));
}

#[test]
fn regions_prints_the_plan() {
    let ports = Ports::new();
    let (code, stdout, _) =
        run_once(&ports, &[("SUPERVISOR_REGIONS", "eu-west-1,us-east-1")], &["regions", "--json"]);
    assert_eq!(code, Some(0));
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        plan,
        serde_json::json!([
            {"region": "eu-west-1", "port": ports.base + 2, "child_port": ports.child_base() + 2, "command": [STANDIN]},
            {"region": "us-east-1", "port": ports.base, "child_port": ports.child_base(), "command": [STANDIN]},
        ])
    );
    let (code, stdout, _) = run_once(&ports, &[], &["regions"]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().count(), 12);
    assert!(stdout.lines().nth(11).unwrap().starts_with("us-west-1"));
}

#[test]
fn help_and_version() {
    let ports = Ports::new();
    let (code, help, _) = run_once(&ports, &[], &["--help"]);
    assert_eq!(code, Some(0));
    for var in [
        "SUPERVISOR_REGIONS",
        "SUPERVISOR_MAX_LINE",
        "HEALTH_CHECK_TIMEOUT",
        "QUIET_HEALTHCHECK",
        "TERMINATION_GRACE_SECONDS",
    ] {
        assert!(help.contains(var), "{var}");
    }
    let (code, version, _) = run_once(&ports, &[], &["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(version.trim(), format!("region-supervisor {}", env!("CARGO_PKG_VERSION")));
}

/// Races spawn-and-register against the reaper: every region restarts a child that exits at
/// once, as fast as it can, while those children also leave orphans for the same `waitpid(-1)`.
/// Every start must be matched by exactly one exit with the child's own status.
/// `STRESS_SECS` sets how long it runs (default 2).
#[test]
fn stress_every_exit_status_reaches_its_region() {
    let secs: u64 = std::env::var("STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let mut sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1,us-west-2,eu-west-1,ap-southeast-1,ap-southeast-2,ap-northeast-1"),
        ("STANDIN_CRASH_AFTER", "0ms"),
        ("STANDIN_ORPHANS", "1"),
        ("SUPERVISOR_MAX_RESTARTS", "100000000"),
        ("SUPERVISOR_RESTART_BACKOFF", "0"),
        ("SUPERVISOR_METRICS_ADDR", "off"),
    ]);
    std::thread::sleep(Duration::from_secs(secs));
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0), "{}", sup.tail(20));
    let events = sup.events();
    let stop_at = events
        .iter()
        .position(|e| e["message"].as_str().unwrap().starts_with("stopping all regions"))
        .unwrap();
    let started = events.iter().filter(|e| e["message"] == "started").count();
    let exits: Vec<(usize, &serde_json::Value)> =
        events.iter().enumerate().filter(|(_, e)| e.get("status").is_some()).collect();
    assert!(started > 100, "only {started} starts in {secs}s");
    assert_eq!(started, exits.len(), "every start is matched by exactly one exit");
    for (i, e) in &exits {
        // The stand-in "crashes" with 3, or exits 1 when its port is still held by the dying
        // group of its predecessor (backoff 0 is that fast). The orphans exit 0: a 0 before
        // the stop would be an orphan's status given to a region. Only a child caught by the
        // stop may end otherwise (0 on SIGTERM, or killed by it before its handler is set).
        let crashed = e["message"] == "exited with status 3" || e["message"] == "exited with status 1";
        let ok = crashed
            || (*i > stop_at
                && (e["message"] == "killed by SIGTERM" || e["message"] == "exited with status 0"));
        assert!(ok, "an exit status was confused: {e}");
    }
    let stopped = events.iter().find(|e| e["message"] == "stopped").unwrap();
    assert_eq!(stopped["events_dropped"], 0, "the check above needs every event");
    assert!(stopped["orphans_reaped"].as_u64().unwrap() > 0, "{stopped}");
}
