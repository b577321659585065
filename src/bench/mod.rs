//! `bosun bench`: figures measured on the local control plane, printed, never
//! asserted. Commit → Healthy, flip-back (first failing probe → last healthy
//! manifests applied → RolledBack), applying 50 objects (first time, and unchanged,
//! which must send nothing) beside `kubectl apply --server-side` of the same objects,
//! commit → applied through a Git push webhook beside the same with polling, and the
//! scale run ([`scale`]): many AppDeployments over ten repositories, beside
//! kubectl alone, measured from the outside.

mod kubectl;
pub mod scale;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

use crate::api::Phase;
use crate::apply::{Applier, ApplyPlan};
use crate::demo::DemoEnvironment;
use crate::render::Manifest;
use bosun_devenv::example::ExampleRevision;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Runs of each of the small measurements (apply, commit → Healthy, flip-back).
    pub runs: usize,
    /// App counts of the scale run (none: skip it).
    pub scale: Vec<usize>,
    /// How long the scale run watches an idle controller.
    pub idle: Duration,
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let runs = options.runs;
    if runs > 0 {
        println!(
            "bosun bench: {runs} runs each, on a local Kubernetes 1.20 control plane (2 shared cores; figures are noisy)"
        );
        let env = DemoEnvironment::start().await?;
        println!(
            "control plane start: {:.2}s",
            env.control_plane.startup_duration().as_secs_f64()
        );
        apply_fifty(&env, runs).await?;
        revisions(&env, runs).await?;
        webhook(&env, runs).await?;
    }
    // `--scale 0` skips the scale run.
    for &apps in options.scale.iter().filter(|&&apps| apps > 0) {
        scale::run(apps, options.idle).await?;
    }
    Ok(())
}

fn summary(name: &str, samples: &[Duration]) {
    let mut sorted: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len().max(1) as f64;
    println!(
        "{name}: n={} min {:.3}s median {:.3}s mean {:.3}s max {:.3}s",
        sorted.len(),
        sorted.first().copied().unwrap_or_default(),
        sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        mean,
        sorted.last().copied().unwrap_or_default()
    );
}

/// 20 ConfigMaps, 15 Deployments, 15 Services: the set `kubectl apply --server-side`
/// was measured with.
fn fifty_objects(generation: usize) -> Vec<Manifest> {
    let mut objects = Vec::new();
    for i in 0..20 {
        objects.push(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("config-{i}")},
            "data": {"key": format!("value-{i}-{generation}")}
        }));
    }
    for i in 0..15 {
        objects.push(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("web-{i}")},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": format!("web-{i}")}},
                "template": {"metadata": {"labels": {"app": format!("web-{i}")}},
                    "spec": {"containers": [{"name": "web", "image": format!("example/web:{generation}"),
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}}
        }));
        objects.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("web-{i}")},
            "spec": {"selector": {"app": format!("web-{i}")}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        }));
    }
    objects
        .into_iter()
        .enumerate()
        .map(|(line, object)| Manifest {
            object,
            file: "bench.yaml".into(),
            line: line + 1,
        })
        .collect()
}

async fn apply_fifty(env: &DemoEnvironment, runs: usize) -> anyhow::Result<()> {
    let client = env.control_plane.client();
    let applier = Applier::new(client.clone());
    let mut first = Vec::new();
    let mut unchanged = Vec::new();
    let mut sent_unchanged = 0;
    for run in 0..runs {
        let namespace = format!("bench-{run}");
        let ns =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .patch(
                &namespace,
                &kube::api::PatchParams::apply("bosun-bench"),
                &kube::api::Patch::Apply(&ns),
            )
            .await?;
        let manifests = fifty_objects(run);
        let plan = |previous_inventory| ApplyPlan {
            manifests: &manifests,
            default_namespace: &namespace,
            owner: "bench/bench",
            app_label: "bench.bench",
            field_manager: "bosun:bench/bench",
            previous_inventory,
        };
        let started = Instant::now();
        let outcome = applier.apply(plan(&[])).await?;
        first.push(started.elapsed());
        let started = Instant::now();
        let again = applier.apply(plan(&outcome.inventory)).await?;
        unchanged.push(started.elapsed());
        sent_unchanged += again.sent.len();
    }
    summary("apply 50 objects (new)", &first);
    summary("apply 50 objects (unchanged)", &unchanged);
    println!("objects sent by the unchanged applies: {sent_unchanged}");

    // The same objects through kubectl alone, in the same run.
    let Some(kubectl) = kubectl::Kubectl::find(env.control_plane.kubeconfig_path()) else {
        println!("kubectl not found: the comparison with kubectl apply --server-side is skipped");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let mut kubectl_first = Vec::new();
    let mut kubectl_unchanged = Vec::new();
    for run in 0..runs {
        let namespace = format!("kubectl-{run}");
        let file = dir.path().join(format!("{namespace}.yaml"));
        kubectl::write_manifests(&file, &fifty_objects(run))?;
        kubectl.create_namespace(&namespace)?;
        kubectl_first.push(kubectl.apply_server_side(&file, &namespace)?);
        kubectl_unchanged.push(kubectl.apply_server_side(&file, &namespace)?);
    }
    summary("kubectl apply --server-side 50 objects (new)", &kubectl_first);
    summary(
        "kubectl apply --server-side 50 objects (unchanged)",
        &kubectl_unchanged,
    );
    println!(
        "bosun / kubectl (medians): new {:.2}x, unchanged {:.2}x",
        median(&first) / median(&kubectl_first),
        median(&unchanged) / median(&kubectl_unchanged)
    );
    Ok(())
}

fn median(samples: &[Duration]) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn revisions(env: &DemoEnvironment, runs: usize) -> anyhow::Result<()> {
    let client = env.control_plane.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "litevault");
    let mut version = 1;
    let mut last = env.commit(&ExampleRevision::good("0.1"), "bench start")?;
    env.install_app_with("0s", "1s").await?;
    let controller = env.start_controller();
    wait_phase(env, Phase::Healthy, &last).await?;

    let mut to_healthy = Vec::new();
    let mut to_applied = Vec::new();
    let mut to_rolled_back = Vec::new();
    // (status writes, Events) of each revision, from the API server's audit log.
    let mut healthy_writes = Vec::new();
    let mut rollback_writes = Vec::new();
    for _ in 0..runs {
        version += 1;
        let at_start = app_writes(env).await?;
        let started = Instant::now();
        last = env.commit(&ExampleRevision::good(&format!("{version}.0")), "good")?;
        wait_phase(env, Phase::Healthy, &last).await?;
        to_healthy.push(started.elapsed());
        let at_healthy = app_writes(env).await?;
        healthy_writes.push(at_healthy - at_start);

        version += 1;
        let healthy = last.clone();
        let failures_before = env.health.counters().failures.load(Ordering::Relaxed);
        env.commit(&ExampleRevision::unhealthy(&format!("{version}.0")), "unhealthy")?;
        // The first failing probe answers once the unhealthy image is applied.
        let first_failure = loop {
            if env.health.counters().failures.load(Ordering::Relaxed) > failures_before {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let good_image = format!("example/litevault-backend:{}.0", version - 1);
        loop {
            if backend_image(&deployments).await?.as_deref() == Some(good_image.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        to_applied.push(first_failure.elapsed());
        wait_phase(env, Phase::RolledBack, &healthy).await?;
        to_rolled_back.push(first_failure.elapsed());
        rollback_writes.push(app_writes(env).await? - at_healthy);
    }
    controller.abort();
    summary("commit -> Healthy (interval 1s, verifyWindow 0s)", &to_healthy);
    summary(
        "flip-back: first failing probe -> last healthy manifests applied",
        &to_applied,
    );
    summary(
        "flip-back: first failing probe -> RolledBack (rollout Ready, gates pass)",
        &to_rolled_back,
    );
    for (what, counts) in [
        ("a Deploy that went Healthy", &healthy_writes),
        (
            "a Deploy rolled back (its Applying to RolledBack)",
            &rollback_writes,
        ),
    ] {
        let (writes, events): (Vec<usize>, Vec<usize>) = counts.iter().map(|c| (c.status, c.events)).unzip();
        println!(
            "per revision, {what}: status writes {}, Events {} (the API server's audit log)",
            spread(&writes),
            spread(&events)
        );
    }
    Ok(())
}

/// Status writes of the AppDeployment and Events written about it so far.
#[derive(Clone, Copy, Debug)]
struct AppWrites {
    status: usize,
    events: usize,
}

impl std::ops::Sub for AppWrites {
    type Output = AppWrites;
    fn sub(self, earlier: AppWrites) -> AppWrites {
        AppWrites {
            status: self.status.saturating_sub(earlier.status),
            events: self.events.saturating_sub(earlier.events),
        }
    }
}

/// Counted from the outside, in the API server's audit log: writes of the example app's
/// status subresource, and writes (create, or a series' patch) of events.k8s.io Events in
/// its namespace (only bosun writes that API there; the control plane's own Events are
/// core/v1). Waits a moment first: Events follow the status write they announce.
async fn app_writes(env: &DemoEnvironment) -> anyhow::Result<AppWrites> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = env.control_plane.audit_writes().await?;
    let in_app = |w: &&bosun_devenv::AuditedWrite| w.namespace.as_deref() == Some("litevault") && !w.dry_run;
    Ok(AppWrites {
        status: writes
            .iter()
            .filter(in_app)
            .filter(|w| w.resource == "appdeployments" && w.subresource.as_deref() == Some("status"))
            .count(),
        events: writes
            .iter()
            .filter(in_app)
            .filter(|w| w.group == "events.k8s.io" && w.resource == "events")
            .count(),
    })
}

/// `min/median/max` of counts.
fn spread(counts: &[usize]) -> String {
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    match (sorted.first(), sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(min), Some(median), Some(max)) => format!("min {min} median {median} max {max}"),
        _ => "none".into(),
    }
}

/// Commit → the new image in the Deployment, for an app polling every second, then
/// for one polling every 10 minutes that is told of each push by a signed GitHub
/// webhook (sent right after the commit, as a forge would).
async fn webhook(env: &DemoEnvironment, runs: usize) -> anyhow::Result<()> {
    use crate::server::webhook::{DEFAULT_BODY_LIMIT, WebhookSettings};
    use hmac::Mac;

    const SECRET: &str = "bench-webhook-secret";
    let client = env.control_plane.client();
    let namespace =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bosun-system"}});
    let params = kube::api::PatchParams::apply("bosun-bench").force();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch("bosun-system", &params, &kube::api::Patch::Apply(&namespace))
        .await?;
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "bosun-webhook", "namespace": "bosun-system"}, "stringData": {"token": SECRET}});
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "bosun-system")
        .patch("bosun-webhook", &params, &kube::api::Patch::Apply(&secret))
        .await?;
    let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let cache = tempfile::tempdir()?;
    let settings = crate::controller::Settings {
        cache_dir: cache.path().to_path_buf(),
        webhook: Some(WebhookSettings {
            secret_namespace: "bosun-system".into(),
            secret_name: "bosun-webhook".into(),
            listen: Some(address),
            body_limit: DEFAULT_BODY_LIMIT,
        }),
        // One tenant (the local admin) whose endpoints listen on loopback.
        single_tenant: true,
        egress_allow: vec!["127.0.0.0/8".parse().expect("a CIDR")],
        ..Default::default()
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(env.control_plane.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let controller = tokio::spawn(crate::controller::run(client.clone(), config, settings));

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "litevault");
    let applied = |image: String| {
        let deployments = deployments.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if backend_image(&deployments).await?.as_deref() == Some(image.as_str()) {
                    return anyhow::Ok(());
                }
                anyhow::ensure!(Instant::now() < deadline, "{image} not applied after 120s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let image = |version: &str| format!("example/litevault-backend:{version}");
    let http = reqwest::Client::new();
    let push = serde_json::to_vec(&serde_json::json!({"repository": {"clone_url": env.git_url()}}))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes())?;
    mac.update(&push);
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let mut polling = Vec::new();
    let mut webhook = Vec::new();
    for (interval, samples) in [("1s", &mut polling), ("10m", &mut webhook)] {
        env.install_app_with("0s", interval).await?;
        for run in 0..runs {
            let version = format!("{interval}.{run}");
            let started = Instant::now();
            let revision = env.commit(&ExampleRevision::good(&version), "bench")?;
            if interval == "10m" {
                let answer = http
                    .post(format!("http://{address}/hooks/github"))
                    .header("x-github-event", "push")
                    .header("x-hub-signature-256", format!("sha256={signature}"))
                    .body(push.clone())
                    .send()
                    .await?;
                anyhow::ensure!(answer.status() == 200, "the webhook answered {}", answer.status());
            }
            applied(image(&version)).await?;
            samples.push(started.elapsed());
            wait_phase(env, Phase::Healthy, &revision).await?;
        }
    }
    controller.abort();
    summary("commit -> applied with polling (interval 1s)", &polling);
    summary("commit -> applied through the webhook (interval 10m)", &webhook);
    println!(
        "commit -> applied through the webhook, p50: {:.3}s (target under 2s)",
        median(&webhook)
    );
    Ok(())
}

async fn wait_phase(env: &DemoEnvironment, phase: Phase, revision: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = env.app().await?.status.unwrap_or_default();
        if status.phase == phase && status.current_revision.as_deref() == Some(revision) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no {phase} at {revision} after 120s (phase {})",
            status.phase
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The image of the example's `backend` Deployment, as the API server has it.
async fn backend_image(deployments: &Api<Deployment>) -> anyhow::Result<Option<String>> {
    Ok(deployments
        .get("backend")
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.image))
}
