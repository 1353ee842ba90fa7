//! The checks of the manifests against the services' code, on every [`super::View`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use clap::{CommandFactory, Parser};
use serde_yaml::Value;

use super::*;

/// Variables read by the telemetry set-up (`spool_platform::telemetry`, the
/// OpenTelemetry SDK and exporter) rather than by the services' `clap` parsers.
const TELEMETRY_ENV: &[&str] = &[
    "RUST_LOG",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
];

/// Where the Dockerfile installs the binaries.
const BIN_DIR: &str = "/usr/local/bin/";

/// A service's parser applied to a command line: (listen port, shutdown grace), or why not.
type Parse = fn(&[String]) -> Result<(u16, Duration), String>;

/// What the manifests are checked against, per service: taken from the code.
struct ServiceSpec {
    binary: &'static str,
    command: clap::Command,
    routes: &'static [(Method, &'static str)],
    /// Parses a command line as the service does: (listen port, shutdown grace).
    parse: Parse,
}

impl ServiceSpec {
    fn all() -> Vec<ServiceSpec> {
        vec![
            ServiceSpec {
                binary: "spool-ingest",
                command: spool_ingest::IngestConfig::command(),
                routes: spool_ingest::routes::ROUTES,
                parse: |argv| {
                    spool_ingest::IngestConfig::try_parse_from(argv)
                        .map(|c| (c.listen.port(), c.common.shutdown_grace))
                        .map_err(|e| e.to_string())
                },
            },
            ServiceSpec {
                binary: "spool-delivery",
                command: spool_delivery::DeliveryConfig::command(),
                routes: spool_delivery::routes::ROUTES,
                parse: |argv| {
                    spool_delivery::DeliveryConfig::try_parse_from(argv)
                        .map(|c| (c.listen.port(), c.common.shutdown_grace))
                        .map_err(|e| e.to_string())
                },
            },
            ServiceSpec {
                binary: "spool-revalidator",
                command: spool_revalidator::RevalidatorConfig::command(),
                routes: spool_revalidator::routes::ROUTES,
                parse: |argv| {
                    spool_revalidator::RevalidatorConfig::try_parse_from(argv)
                        .map(|c| (c.listen.port(), c.common.shutdown_grace))
                        .map_err(|e| e.to_string())
                },
            },
        ]
    }

    /// Environment variable → long flag, for every variable the parser reads.
    fn env_flags(&self) -> BTreeMap<String, String> {
        self.command
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_str()?.to_owned();
                let long = arg.get_long()?.to_owned();
                Some((env, long))
            })
            .collect()
    }

    fn reads(&self, name: &str) -> bool {
        TELEMETRY_ENV.contains(&name) || self.env_flags().contains_key(name)
    }

    /// The service's default listen port (the `--listen` default).
    fn default_port(&self) -> u16 {
        let argv = vec![self.binary.to_owned()];
        match (self.parse)(&argv) {
            Ok((port, _)) => port,
            Err(e) => panic!("{} does not parse without arguments: {e}", self.binary),
        }
    }

    fn serves_get(&self, path: &str) -> bool {
        self.routes
            .iter()
            .any(|(method, route)| method == Method::GET && *route == path)
    }

    /// An edge path prefix reaches at least one of the service's routes.
    fn has_route_under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        self.routes.iter().any(|(_, route)| {
            route.starts_with(prefix)
                && (route.len() == prefix.len() || route[prefix.len()..].starts_with('/'))
        })
    }
}

/// Checks one container of one service in one view; problems name the file.
fn check_container(
    view: &View,
    workload: &Workload,
    container: &Container,
    spec: &ServiceSpec,
    problems: &mut Vec<String>,
) {
    let at_view = format!("(in {})", view.name);
    let who = format!("container {}", spec.binary);

    // The binary: the command runs the service's binary where the Dockerfile puts it.
    let expected_command = format!("{BIN_DIR}{}", spec.binary);
    match &container.command {
        Some(cmd) if cmd.value.first() == Some(&expected_command) => {}
        Some(cmd) => problems.push(format!(
            "{}: {who} runs {:?}, expected [{expected_command:?}] (the binary the image installs) {at_view}",
            cmd.file, cmd.value
        )),
        None => problems.push(format!(
            "{}: {who} has no command; it must run {expected_command} (one image holds all three binaries) {at_view}",
            container.file
        )),
    }
    if let Some(image) = &container.image {
        if !image.starts_with("spool-live") {
            problems.push(format!(
                "{}: {who} uses image {image:?}, expected the project's image `spool-live` {at_view}",
                container.file
            ));
        }
    }

    // Environment: every name is read by the service, or expanded by Kubernetes into
    // another variable ($(NAME)).
    let mut env: BTreeMap<String, Sourced<EnvValue>> = BTreeMap::new();
    for (kind, name, file) in &container.env_from {
        if kind == "configMapRef" {
            match view.config_maps.get(name) {
                Some(data) => {
                    for (key, value) in data {
                        env.insert(
                            key.clone(),
                            Sourced {
                                value: value
                                    .value
                                    .clone()
                                    .map_or(EnvValue::Reference, EnvValue::Literal),
                                file: value.file.clone(),
                            },
                        );
                    }
                }
                None => problems.push(format!(
                    "{file}: {who} takes its environment from ConfigMap {name}, which no file defines {at_view}"
                )),
            }
        } else {
            match view.secrets.get(name) {
                Some(keys) => {
                    for key in keys {
                        env.insert(
                            key.clone(),
                            Sourced {
                                value: EnvValue::Reference,
                                file: file.clone(),
                            },
                        );
                    }
                }
                None => problems.push(format!(
                    "{file}: {who} takes its environment from Secret {name}, whose keys no file shows (use env[].valueFrom.secretKeyRef) {at_view}"
                )),
            }
        }
    }
    env.extend(container.env.clone());
    let expanded: BTreeSet<String> = env
        .values()
        .filter_map(|v| match &v.value {
            EnvValue::Literal(s) => Some(s.as_str()),
            EnvValue::Reference => None,
        })
        .chain(container.args.iter().map(String::as_str))
        .flat_map(|s| s.split("$(").skip(1))
        .filter_map(|rest| rest.split_once(')').map(|(name, _)| name.to_owned()))
        .collect();
    // $(NAME) in an `env` value expands only variables defined before it (envFrom's first).
    for (i, name) in container.env_order.iter().enumerate() {
        let Some(Sourced {
            value: EnvValue::Literal(value),
            file,
        }) = container.env.get(name)
        else {
            continue;
        };
        let used_names: BTreeSet<&str> = value
            .split("$(")
            .skip(1)
            .filter_map(|rest| rest.split_once(')').map(|(n, _)| n))
            .collect();
        for used in used_names {
            let earlier = container.env_order[..i].iter().any(|n| n == used);
            let from_env_from = env.contains_key(used) && !container.env.contains_key(used);
            if container.env.contains_key(used) && !earlier && !from_env_from {
                problems.push(format!(
                    "{file}: {who}'s {name} refers to $({used}), which is defined after it (Kubernetes would pass the text as is) {at_view}"
                ));
            }
        }
    }
    for name in expanded.difference(&env.keys().cloned().collect()) {
        problems.push(format!(
            "{}: {who} refers to $({name}), which is none of its variables (Kubernetes would pass the text as is) {at_view}",
            container.file
        ));
    }
    for (name, value) in &env {
        if !spec.reads(name) && !expanded.contains(name) {
            problems.push(format!(
                "{}: {who} is given {name}, which {} does not read {at_view}",
                value.file, spec.binary
            ));
        }
    }

    // Values: the service's own parser must accept them (as flags, which is what the
    // variables stand for).
    let flags = spec.env_flags();
    let mut argv = vec![spec.binary.to_owned()];
    argv.extend(container.args.iter().cloned());
    // (flag, variable, file) for each literal value of a variable the parser reads
    let mut given = Vec::new();
    for (name, value) in &env {
        if let (Some(long), EnvValue::Literal(v)) = (flags.get(name), &value.value) {
            // An empty value is passed on too: clap takes an empty variable as an empty
            // value, not as an absent one.
            if !v.contains("$(") {
                given.push((format!("--{long}={v}"), name, &value.file));
            }
        }
    }
    argv.extend(given.iter().map(|(flag, _, _)| flag.clone()));
    let (port, grace) = match (spec.parse)(&argv) {
        Ok(parsed) => parsed,
        Err(whole) => {
            // Name the variables whose values are refused on their own.
            let mut named = false;
            for (flag, name, file) in &given {
                if let Err(e) = (spec.parse)(&[spec.binary.to_owned(), flag.clone()]) {
                    named = true;
                    problems.push(format!(
                        "{file}: {name} has a value {} refuses {at_view}: {}",
                        spec.binary,
                        e.lines().next().unwrap_or_default()
                    ));
                }
            }
            if !named {
                problems.push(format!(
                    "{}: {} refuses its settings {at_view}: {whole}",
                    container.file, spec.binary
                ));
            }
            (spec.default_port(), Duration::from_secs(20))
        }
    };

    // Ports: the container port named http is where the service listens.
    match container.http_port() {
        Some(p) if p == i64::from(port) => {}
        Some(p) => problems.push(format!(
            "{}: {who} declares port http = {p}, but {} listens on {port} {at_view}",
            container.ports.as_ref().map_or(&container.file, |s| &s.file),
            spec.binary
        )),
        None => problems.push(format!(
            "{}: {who} has no container port named `http` (probes, Services and NetworkPolicies refer to it) {at_view}",
            container.file
        )),
    }
    let port_ok = |v: Option<&Value>| match v {
        Some(Value::String(name)) => name == "http",
        Some(Value::Number(n)) => n.as_i64() == Some(i64::from(port)),
        _ => false,
    };

    // Probes: startup and readiness on /readyz, liveness on /healthz (which never depends
    // on NATS), all on routes the service serves.
    for (probe, expected) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let Some(p) = container.probes.get(probe) else {
            problems.push(format!(
                "{}: {who} has no {probe} (expected an HTTP GET of {expected}) {at_view}",
                container.file
            ));
            continue;
        };
        let path = text(&p.value, &["httpGet", "path"]).unwrap_or_default();
        if !spec.serves_get(path) {
            problems.push(format!(
                "{}: {who} {probe} requests {path:?}, which is not a GET route of {} ({:?}) {at_view}",
                p.file,
                spec.binary,
                spec.routes.iter().map(|(_, r)| *r).collect::<Vec<_>>()
            ));
        } else if path != expected {
            problems.push(format!(
                "{}: {who} {probe} requests {path}, expected {expected} {at_view}",
                p.file
            ));
        }
        if !port_ok(at(&p.value, &["httpGet", "port"])) {
            problems.push(format!(
                "{}: {who} {probe} does not probe port `http` ({port}) {at_view}",
                p.file
            ));
        }
    }

    // Metrics: the scrape annotations point at the service's port and /metrics route.
    if let Some(scrape_port) = workload.annotations.get("prometheus.io/port") {
        if scrape_port.value != port.to_string() {
            problems.push(format!(
                "{}: prometheus.io/port is {}, but {} listens on {port} {at_view}",
                scrape_port.file, scrape_port.value, spec.binary
            ));
        }
    }
    if let Some(path) = workload.annotations.get("prometheus.io/path") {
        if !spec.serves_get(&path.value) {
            problems.push(format!(
                "{}: prometheus.io/path {} is not a GET route of {} {at_view}",
                path.file, path.value, spec.binary
            ));
        }
    }

    // Termination: a preStop pause, then SIGTERM's drain must fit in the grace period.
    let pause = match &container.pre_stop {
        Some(p) => at(&p.value, &["sleep", "seconds"])
            .and_then(Value::as_i64)
            .unwrap_or(0),
        None => {
            problems.push(format!(
                "{}: {who} has no preStop pause (endpoints must drop the pod before SIGTERM) {at_view}",
                container.file
            ));
            0
        }
    };
    let needed = pause + i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    match &workload.grace {
        Some(g) if g.value > needed => {}
        Some(g) => problems.push(format!(
            "{}: terminationGracePeriodSeconds {} must exceed the preStop pause ({pause} s) + SPOOL_SHUTDOWN_GRACE ({} s) {at_view}",
            g.file,
            g.value,
            grace.as_secs()
        )),
        None => problems.push(format!(
            "{}: no terminationGracePeriodSeconds; it must exceed the preStop pause ({pause} s) + SPOOL_SHUTDOWN_GRACE ({} s) {at_view}",
            workload.file,
            grace.as_secs()
        )),
    }

    // The sites file is on a mounted volume.
    if let Some(Sourced {
        value: EnvValue::Literal(path),
        file,
    }) = env.get("SPOOL_SITES_FILE")
    {
        let mounted = container
            .mounts
            .iter()
            .any(|m| Path::new(path).starts_with(m));
        if !mounted {
            problems.push(format!(
                "{file}: SPOOL_SITES_FILE={path} is under none of {who}'s volume mounts {:?} {at_view}",
                container.mounts
            ));
        }
    }
}

#[test]
fn manifests_match_the_services() {
    let specs = ServiceSpec::all();
    let mut problems = Vec::new();
    for view in views() {
        problems.extend(view.problems.iter().cloned());
        let mut seen = BTreeSet::new();
        for workload in view.workloads.values() {
            for (name, container) in &workload.containers {
                match specs.iter().find(|s| s.binary == name) {
                    Some(spec) => {
                        seen.insert(spec.binary);
                        check_container(&view, workload, container, spec, &mut problems);
                    }
                    None if container
                        .image
                        .as_deref()
                        .is_some_and(|i| i.starts_with("spool-live")) =>
                    {
                        problems.push(format!(
                            "{}: container {name} runs the spool-live image but is named after none of the binaries {:?} (in {})",
                            container.file,
                            specs.iter().map(|s| s.binary).collect::<Vec<_>>(),
                            view.name
                        ));
                    }
                    None => {} // another program (the dev overlay's NATS)
                }
            }
        }
        for spec in &specs {
            if !seen.contains(spec.binary) {
                problems.push(format!(
                    "{}: no workload runs {} (expected a container of that name)",
                    view.name, spec.binary
                ));
            }
        }

        // Services in front of the services target their `http` port.
        for (service, file) in &view.services {
            let selected = text(service, &["spec", "selector", "app.kubernetes.io/name"]);
            let Some(spec) = specs.iter().find(|s| Some(s.binary) == selected) else {
                continue;
            };
            for port in seq(service, &["spec", "ports"]) {
                let ok = match at(port, &["targetPort"]) {
                    Some(Value::String(name)) => name == "http",
                    Some(Value::Number(n)) => n.as_i64() == Some(i64::from(spec.default_port())),
                    _ => false,
                };
                if !ok {
                    problems.push(format!(
                        "{file}: Service {} targets {:?}, expected the container port `http` of {} (in {})",
                        text(service, &["metadata", "name"]).unwrap_or_default(),
                        at(port, &["targetPort"]),
                        spec.binary,
                        view.name
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the manifests and the code disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// Whether an edge path prefix reaches one of the service's admin routes.
fn reaches_admin(spec: &ServiceSpec, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    spec.routes.iter().any(|(_, route)| {
        route.starts_with("/v1/admin")
            && route.starts_with(prefix)
            && (route.len() == prefix.len() || route[prefix.len()..].starts_with('/'))
    })
}

/// The edge examples route to Services that exist, on their ports, and to paths the
/// service behind them serves.
#[test]
fn edge_routes_reach_served_paths() {
    let specs = ServiceSpec::all();
    let base = &views()[0];
    // The service behind a Service name and port, if the base defines that port.
    let service_behind = |name: &str, port: &Value| -> Option<&ServiceSpec> {
        let (service, _) = base
            .services
            .iter()
            .find(|(s, _)| text(s, &["metadata", "name"]) == Some(name))?;
        let exists = seq(service, &["spec", "ports"]).iter().any(|p| match port {
            Value::String(n) => text(p, &["name"]) == Some(n.as_str()),
            Value::Number(n) => at(p, &["port"]).and_then(Value::as_i64) == n.as_i64(),
            _ => false,
        });
        let selected = text(service, &["spec", "selector", "app.kubernetes.io/name"])?;
        specs.iter().find(|s| exists && s.binary == selected)
    };
    let mut problems = Vec::new();
    let mut routes = 0;
    for path in yaml_files(&repo_root().join("deploy/edge")) {
        let file = rel(&path);
        let content = std::fs::read_to_string(&path).expect("readable");
        for doc in documents(&file, &content) {
            // (backend service, port, path prefix)
            let mut backends: Vec<(String, Value, String)> = Vec::new();
            match text(&doc, &["kind"]) {
                Some("HTTPRoute") => {
                    for rule in seq(&doc, &["spec", "rules"]) {
                        let prefixes: Vec<String> = seq(rule, &["matches"])
                            .iter()
                            .filter_map(|m| text(m, &["path", "value"]).map(str::to_owned))
                            .collect();
                        for backend in seq(rule, &["backendRefs"]) {
                            let name = text(backend, &["name"]).unwrap_or_default();
                            let port = at(backend, &["port"]).cloned().unwrap_or_default();
                            for prefix in &prefixes {
                                backends.push((name.to_owned(), port.clone(), prefix.clone()));
                            }
                        }
                    }
                }
                Some("Ingress") => {
                    for rule in seq(&doc, &["spec", "rules"]) {
                        for p in seq(rule, &["http", "paths"]) {
                            let name = text(p, &["backend", "service", "name"]).unwrap_or_default();
                            let port = at(p, &["backend", "service", "port", "name"])
                                .or_else(|| at(p, &["backend", "service", "port", "number"]))
                                .cloned()
                                .unwrap_or_default();
                            let prefix = text(p, &["path"]).unwrap_or("/");
                            backends.push((name.to_owned(), port, prefix.to_owned()));
                        }
                    }
                }
                _ => {}
            }
            for (name, port, prefix) in backends {
                routes += 1;
                match service_behind(&name, &port) {
                    None => problems.push(format!(
                        "{file}: routes to Service {name} port {port:?}, which deploy/k8s/base does not define"
                    )),
                    Some(spec) if !spec.has_route_under(&prefix) => problems.push(format!(
                        "{file}: routes {prefix} to {name}, but {} serves nothing under it",
                        spec.binary
                    )),
                    Some(spec) if spec.has_route_under(&prefix) && reaches_admin(spec, &prefix) => {
                        problems.push(format!(
                            "{file}: routes {prefix} to {name}, which exposes {}'s admin API (/v1/admin/...) publicly",
                            spec.binary
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    assert!(routes > 0, "deploy/edge routes nothing");
    assert!(
        problems.is_empty(),
        "the edge examples and the code disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The binaries the manifests run are the workspace's and the image's.
#[test]
fn binary_names_match_the_workspace_and_the_image() {
    let root = repo_root();
    let mut bins = BTreeSet::new();
    for dir in [
        "services/ingest",
        "services/delivery",
        "services/revalidator",
    ] {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{dir}/Cargo.toml: {e}"));
        let mut in_bin = false;
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin {
                if let Some(name) = line.strip_prefix("name").map(str::trim) {
                    if let Some(name) = name.strip_prefix('=') {
                        bins.insert(name.trim().trim_matches('"').to_owned());
                    }
                }
            }
        }
    }
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("a Dockerfile");
    let mut problems = Vec::new();
    for spec in ServiceSpec::all() {
        if !bins.contains(spec.binary) {
            problems.push(format!(
                "deploy/k8s runs {}, but no services/*/Cargo.toml has a [[bin]] of that name ({bins:?})",
                spec.binary
            ));
        }
        if spec.command.get_name() != spec.binary {
            problems.push(format!(
                "the {} parser calls itself {:?}",
                spec.binary,
                spec.command.get_name()
            ));
        }
        let built = format!("target/release/{}", spec.binary);
        if !dockerfile.split_whitespace().any(|token| token == built) {
            problems.push(format!(
                "Dockerfile: does not copy target/release/{} into the image",
                spec.binary
            ));
        }
    }
    // The build context keeps every workspace member (cargo loads them all, even to build
    // three packages) and the lock file.
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let members: Vec<String> = workspace
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('[')?.1.split_once(']'))
        .map(|(list, _)| {
            list.split(',')
                .map(|m| m.trim().trim_matches('"').to_owned())
                .filter(|m| !m.is_empty())
                .collect()
        })
        .unwrap_or_default();
    assert!(!members.is_empty(), "no workspace members in Cargo.toml");
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    let excluded: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .collect();
    for needed in members
        .iter()
        .map(String::as_str)
        .chain(["Cargo.toml", "Cargo.lock"])
    {
        for pattern in &excluded {
            let pattern = pattern.trim_end_matches('/');
            let hit = pattern == "*"
                || needed == pattern
                || needed.starts_with(&format!("{pattern}/"))
                || pattern
                    .strip_prefix("**/")
                    .is_some_and(|p| needed.split('/').any(|part| part == p));
            if hit {
                problems.push(format!(
                    ".dockerignore: `{pattern}` leaves {needed} out of the build context, but the build needs it"
                ));
            }
        }
    }
    if !dockerfile.contains(&format!("{BIN_DIR} ")) && !dockerfile.contains(&format!("{BIN_DIR}\n"))
    {
        problems.push(format!(
            "Dockerfile: the binaries are not installed in {BIN_DIR}"
        ));
    }
    assert!(
        problems.is_empty(),
        "the binaries, the workspace and the image disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The example and development sites files are sites files the services accept.
#[test]
fn example_sites_files_are_valid() {
    let root = repo_root();
    let dev = root.join("deploy/k8s/overlays/dev/sites.yaml");
    if let Err(e) = spool_platform::registry::load_sites_file(&dev) {
        panic!("{}: {e:#}", rel(&dev));
    }
    let example = root.join("deploy/k8s/base/secret.example.yaml");
    let content = std::fs::read_to_string(&example).expect("the Secret example");
    let doc = documents(&rel(&example), &content)
        .into_iter()
        .next()
        .expect("one document");
    let sites = text(&doc, &["stringData", "sites.yaml"]).expect("stringData.sites.yaml");
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("sites.yaml");
    std::fs::write(&path, sites).expect("writable");
    if let Err(e) = spool_platform::registry::load_sites_file(&path) {
        panic!("{}: stringData.sites.yaml: {e:#}", rel(&example));
    }
}
