//! The Kubernetes manifests (deploy/k8s, deploy/edge) against the code, so that they can't
//! drift apart ([`checks`]): every environment variable a container gets is one its service
//! reads, and its value parses; container ports are the services' listen ports; probe,
//! metrics and edge paths are routes the service serves; commands run the workspace's
//! binaries, as the Dockerfile installs them; the grace period outlasts the drain.
//!
//! This file reads the manifests as plain YAML, the way kustomize layers them: the base
//! alone, then the base with each overlay (generators merged, Deployment patches applied to
//! the containers by name) — a [`View`] each. Rendering and schema validation are
//! `make deploy-check`'s.

mod checks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

/// A container port: (name, number).
type Port = (Option<String>, i64);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration-tests crate is in the workspace root")
        .to_path_buf()
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    files
}

fn documents(file: &str, text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn seq<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An environment variable's value: literal, or from a Secret/field/resource.
#[derive(Debug, Clone)]
enum EnvValue {
    Literal(String),
    Reference,
}

#[derive(Debug, Clone)]
struct Sourced<T> {
    value: T,
    file: String,
}

#[derive(Debug, Clone, Default)]
struct Container {
    file: String,
    image: Option<String>,
    command: Option<Sourced<Vec<String>>>,
    args: Vec<String>,
    env: BTreeMap<String, Sourced<EnvValue>>,
    /// The `env` names in the order Kubernetes defines them ($(NAME) sees only earlier ones).
    env_order: Vec<String>,
    /// ("configMapRef" | "secretRef", name, file)
    env_from: Vec<(String, String, String)>,
    ports: Option<Sourced<Vec<Port>>>,
    probes: BTreeMap<&'static str, Sourced<Value>>,
    pre_stop: Option<Sourced<Value>>,
    mounts: BTreeSet<String>,
}

impl Container {
    fn patch(&mut self, spec: &Value, file: &str) {
        if self.file.is_empty() {
            self.file = file.to_owned();
        }
        if let Some(image) = text(spec, &["image"]) {
            self.image = Some(image.to_owned());
        }
        if let Some(command) = at(spec, &["command"]).and_then(Value::as_sequence) {
            self.command = Some(Sourced {
                value: command.iter().filter_map(scalar).collect(),
                file: file.to_owned(),
            });
        }
        if let Some(args) = at(spec, &["args"]).and_then(Value::as_sequence) {
            self.args = args.iter().filter_map(scalar).collect();
        }
        for var in seq(spec, &["env"]) {
            let Some(name) = text(var, &["name"]) else {
                continue;
            };
            let value = match at(var, &["value"]) {
                Some(v) => EnvValue::Literal(scalar(v).unwrap_or_default()),
                None if var.get("valueFrom").is_some() => EnvValue::Reference,
                None => EnvValue::Literal(String::new()),
            };
            if !self.env_order.iter().any(|n| n == name) {
                self.env_order.push(name.to_owned());
            }
            self.env.insert(
                name.to_owned(),
                Sourced {
                    value,
                    file: file.to_owned(),
                },
            );
        }
        for source in seq(spec, &["envFrom"]) {
            for kind in ["configMapRef", "secretRef"] {
                if let Some(name) = text(source, &[kind, "name"]) {
                    let entry = (kind.to_owned(), name.to_owned(), file.to_owned());
                    if !self.env_from.contains(&entry) {
                        self.env_from.push(entry);
                    }
                }
            }
        }
        if let Some(ports) = at(spec, &["ports"]).and_then(Value::as_sequence) {
            self.ports = Some(Sourced {
                value: ports
                    .iter()
                    .map(|p| {
                        (
                            text(p, &["name"]).map(str::to_owned),
                            at(p, &["containerPort"])
                                .and_then(Value::as_i64)
                                .unwrap_or(-1),
                        )
                    })
                    .collect(),
                file: file.to_owned(),
            });
        }
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            if let Some(p) = spec.get(probe) {
                self.probes.insert(
                    probe,
                    Sourced {
                        value: p.clone(),
                        file: file.to_owned(),
                    },
                );
            }
        }
        if let Some(p) = at(spec, &["lifecycle", "preStop"]) {
            self.pre_stop = Some(Sourced {
                value: p.clone(),
                file: file.to_owned(),
            });
        }
        for mount in seq(spec, &["volumeMounts"]) {
            if let Some(path) = text(mount, &["mountPath"]) {
                self.mounts.insert(path.to_owned());
            }
        }
    }

    fn http_port(&self) -> Option<i64> {
        let ports = &self.ports.as_ref()?.value;
        ports
            .iter()
            .find(|(name, _)| name.as_deref() == Some("http"))
            .map(|(_, port)| *port)
    }
}

#[derive(Debug, Clone, Default)]
struct Workload {
    file: String,
    grace: Option<Sourced<i64>>,
    annotations: BTreeMap<String, Sourced<String>>,
    containers: BTreeMap<String, Container>,
}

impl Workload {
    fn patch(&mut self, doc: &Value, file: &str) {
        if self.file.is_empty() {
            self.file = file.to_owned();
        }
        let pod = at(doc, &["spec", "template"]);
        if let Some(grace) = pod
            .and_then(|p| at(p, &["spec", "terminationGracePeriodSeconds"]))
            .and_then(Value::as_i64)
        {
            self.grace = Some(Sourced {
                value: grace,
                file: file.to_owned(),
            });
        }
        if let Some(annotations) = pod
            .and_then(|p| at(p, &["metadata", "annotations"]))
            .and_then(Value::as_mapping)
        {
            for (k, v) in annotations {
                if let (Some(k), Some(v)) = (k.as_str(), scalar(v)) {
                    self.annotations.insert(
                        k.to_owned(),
                        Sourced {
                            value: v,
                            file: file.to_owned(),
                        },
                    );
                }
            }
        }
        let Some(pod) = pod else { return };
        for list in ["initContainers", "containers"] {
            for spec in seq(pod, &["spec", list]) {
                let Some(name) = text(spec, &["name"]) else {
                    continue;
                };
                self.containers
                    .entry(name.to_owned())
                    .or_default()
                    .patch(spec, file);
            }
        }
    }
}

/// What `kubectl kustomize` would combine for one directory stack (base, base + overlay).
#[derive(Debug, Clone, Default)]
struct View {
    name: String,
    /// "Deployment/spool-ingest" → the workload, patches applied.
    workloads: BTreeMap<String, Workload>,
    /// ConfigMap name → key → (literal value if known, file).
    config_maps: BTreeMap<String, BTreeMap<String, Sourced<Option<String>>>>,
    secrets: BTreeMap<String, BTreeSet<String>>,
    /// (Service document, file)
    services: Vec<(Value, String)>,
    problems: Vec<String>,
}

impl View {
    fn load_dir(&mut self, dir: &Path) {
        for path in yaml_files(dir) {
            let file = rel(&path);
            let content =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {file}: {e}"));
            for doc in documents(&file, &content) {
                self.load_doc(&doc, &file, dir);
            }
        }
    }

    fn load_doc(&mut self, doc: &Value, file: &str, dir: &Path) {
        if text(doc, &["$patch"]) == Some("delete") {
            return;
        }
        let (Some(kind), name) = (text(doc, &["kind"]), text(doc, &["metadata", "name"])) else {
            return; // not a Kubernetes object (e.g. a sites file)
        };
        let name = name.unwrap_or_default().to_owned();
        match kind {
            "Kustomization" => self.load_kustomization(doc, file, dir),
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" => {
                self.workloads
                    .entry(format!("{kind}/{name}"))
                    .or_default()
                    .patch(doc, file);
            }
            "ConfigMap" => {
                let data = self.config_maps.entry(name).or_default();
                for section in ["data", "binaryData"] {
                    if let Some(map) = at(doc, &[section]).and_then(Value::as_mapping) {
                        for (k, v) in map {
                            if let Some(k) = k.as_str() {
                                data.insert(
                                    k.to_owned(),
                                    Sourced {
                                        value: scalar(v),
                                        file: file.to_owned(),
                                    },
                                );
                            }
                        }
                    }
                }
            }
            "Secret" => {
                let keys = self.secrets.entry(name).or_default();
                for section in ["data", "stringData"] {
                    if let Some(map) = at(doc, &[section]).and_then(Value::as_mapping) {
                        keys.extend(map.keys().filter_map(Value::as_str).map(str::to_owned));
                    }
                }
            }
            "Service" => self.services.push((doc.clone(), file.to_owned())),
            _ => {}
        }
    }

    fn load_kustomization(&mut self, doc: &Value, file: &str, dir: &Path) {
        for generator in seq(doc, &["configMapGenerator"]) {
            let Some(name) = text(generator, &["name"]) else {
                continue;
            };
            let behavior = text(generator, &["behavior"]).unwrap_or("create");
            if !seq(generator, &["envs"]).is_empty() || generator.get("env").is_some() {
                self.problems.push(format!(
                    "{file}: configMapGenerator {name} uses `envs`; this test reads `literals` and `files` only"
                ));
            }
            let data = self.config_maps.entry(name.to_owned()).or_default();
            if behavior == "replace" {
                data.clear();
            }
            for literal in seq(generator, &["literals"])
                .iter()
                .filter_map(Value::as_str)
            {
                let (key, value) = literal.split_once('=').unwrap_or((literal, ""));
                data.insert(
                    key.to_owned(),
                    Sourced {
                        value: Some(value.to_owned()),
                        file: file.to_owned(),
                    },
                );
            }
            for source in seq(generator, &["files"]).iter().filter_map(Value::as_str) {
                let key = source
                    .split_once('=')
                    .map_or_else(|| source.rsplit('/').next().unwrap_or(source), |(k, _)| k);
                data.insert(
                    key.to_owned(),
                    Sourced {
                        value: None,
                        file: file.to_owned(),
                    },
                );
            }
        }
        for generator in seq(doc, &["secretGenerator"]) {
            let Some(name) = text(generator, &["name"]) else {
                continue;
            };
            let keys = self.secrets.entry(name.to_owned()).or_default();
            for literal in seq(generator, &["literals"])
                .iter()
                .filter_map(Value::as_str)
            {
                keys.insert(
                    literal
                        .split_once('=')
                        .map_or(literal, |(k, _)| k)
                        .to_owned(),
                );
            }
            for source in seq(generator, &["files"]).iter().filter_map(Value::as_str) {
                let key = source
                    .split_once('=')
                    .map_or_else(|| source.rsplit('/').next().unwrap_or(source), |(k, _)| k);
                keys.insert(key.to_owned());
            }
        }
        // Inline patches (`patches: [{patch: "..."}]`); patch files are loaded with the
        // directory's other files.
        for patch in seq(doc, &["patches"]) {
            if let Some(inline) = text(patch, &["patch"]) {
                for inner in documents(file, inline) {
                    self.load_doc(&inner, file, dir);
                }
            }
        }
        for resource in seq(doc, &["resources"]).iter().filter_map(Value::as_str) {
            let target = dir.join(resource);
            if !target.exists() {
                self.problems
                    .push(format!("{file}: resource {resource} does not exist"));
            }
        }
    }
}

fn views() -> Vec<View> {
    let k8s = repo_root().join("deploy/k8s");
    let mut base = View {
        name: "deploy/k8s/base".into(),
        ..View::default()
    };
    base.load_dir(&k8s.join("base"));
    let mut views = vec![base.clone()];
    let overlays = k8s.join("overlays");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&overlays)
        .unwrap_or_else(|e| panic!("reading {}: {e}", overlays.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no overlays under {}", rel(&overlays));
    for dir in dirs {
        let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("{}/kustomization.yaml: {e}", rel(&dir)));
        let mut view = base.clone();
        view.name = rel(&dir);
        if !kustomization.contains("../../base") {
            view.problems.push(format!(
                "{}/kustomization.yaml: does not build on ../../base, which this test assumes",
                rel(&dir)
            ));
        }
        view.load_dir(&dir);
        views.push(view);
    }
    views
}
