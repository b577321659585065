//! Resource quantities against a real (1.20) API server: the server reads every quantity
//! as `bosun::render::quantity` does; quantities written as numbers render to strings
//! the server takes and keeps as sent; and manifests holding them apply once and then
//! stay quiet.

mod support;

use anyhow::{Context, bail, ensure};
use bosun::api::InventoryEntry;
use bosun::apply::plan::{already_applied, is_subset};
use bosun::apply::{Applier, ApplyOutcome, ApplyPlan};
use bosun::render::quantity::{Quantity, canonical_text_of_number, same_quantity};
use bosun::render::{Manifest, render};
use bosun::source::SourceFile;
use bosun_devenv::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Number, Value, json};
use support::init_tracing;

const FIELD_MANAGER: &str = "bosun-quantities-test";
const RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// Measured on the 1.20 server: sent as a container's memory limit, read back.
const SERVER_FACTS: &[(&str, &str)] = &[
    ("0.5", "500m"),
    ("1", "1"),
    ("268435456", "268435456"),
    ("1.5Gi", "1536Mi"),
    ("1000", "1k"),
    ("1024Mi", "1Gi"),
    ("0.5Ki", "512"),
    ("1e3", "1e3"),
    ("100m", "100m"),
    ("1.5", "1500m"),
    ("2000m", "2"),
    ("0.1", "100m"),
    ("128974848000", "128974848k"),
    ("1G", "1G"),
    ("12e6", "12e6"),
    ("0.0000000001", "1m"),
    ("1.23456789012Ki", "1264198m"),
    ("0", "0"),
    ("0Mi", "0"),
    ("1.5e-3", "2e-3"),
    ("1E", "1E"),
    ("8Ei", "9223372036854775807"),
    ("1500k", "1500k"),
    ("0.001Ki", "1024m"),
    ("10Ti", "10Ti"),
    ("123456789012345", "123456789012345"),
    ("2.5M", "2500k"),
    ("1.000", "1"),
    ("01", "01"),
    ("+5", "+5"),
    ("1e-9", "1e-3"),
    ("1e-10", "1e-3"),
    ("1Ki", "1Ki"),
    ("1025", "1025"),
];

/// Texts the server reads as numbers although they look odd.
const ODD_BUT_ACCEPTED: &[&str] = &[
    "1.",
    ".5",
    "1.G",
    "00",
    "0.0",
    "+",
    ".",
    "Ki",
    "1e+3",
    " 1 ",
    "1.234567",
    "1.000001",
    "0.0005Ki",
    "16Ei",
    "100E",
    "123456789012345678901234567890",
];

/// Decimal values beyond 10²¹ lose their suffix on the server: it changes the value.
const CHANGED_BY_THE_SERVER: &[(&str, &str)] = &[("1000E", "1"), ("12000E", "12")];

/// Texts both the server and the parser refuse.
const MALFORMED: &[&str] = &[
    "", "abc", "1.5.5", "1 Gi", "1ki", "1e", "--1", "1KiB", "1e3.5", ".e-10", "1,5",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_on_a_real_api_server() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    let version = client.apiserver_version().await?;
    // The texts the server keeps as written are 1.20's; newer servers differ in details.
    let server_1_20 = version.major == "1" && version.minor.trim_end_matches('+') == "20";

    server_reads_quantities_as_we_do(&client, server_1_20).await?;
    malformed_quantities_are_refused_by_both(&client).await?;
    numeric_quantities_apply_once_then_stay_quiet(&client, server_1_20).await?;

    control_plane.stop();
    Ok(())
}

/// One limit value of the test Pod.
struct Case {
    /// As written in the manifest (a string or a number).
    written: Value,
    /// What the 1.20 server is known to write back, for the measured facts.
    fact: Option<&'static str>,
}

fn text_cases(texts: impl IntoIterator<Item = String>) -> Vec<Case> {
    texts
        .into_iter()
        .map(|text| Case {
            written: Value::String(text),
            fact: None,
        })
        .collect()
}

/// Non-negative quantity texts in every notation (the server refuses negative limits),
/// within the range where the server keeps the value.
fn generated_texts(count: usize) -> Vec<String> {
    let suffix = prop_oneof![
        prop::sample::select(vec![
            "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ])
        .prop_map(str::to_string),
        (prop::sample::select(vec!["e", "E"]), -12_i32..=24).prop_map(|(e, n)| format!("{e}{n}")),
    ];
    let text = (
        prop::sample::select(vec!["", "", "", "+"]),
        "[0-9]{1,15}",
        prop::option::of("[0-9]{0,12}"),
        suffix,
    )
        .prop_map(|(sign, integer, fraction, suffix)| {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{sign}{integer}{fraction}{suffix}")
        })
        .prop_filter("the server keeps the value", |text| {
            let stored = Quantity::parse(text).map(|q| q.round_up_to_milli());
            stored.is_ok_and(|q| Quantity::parse(&q.server_text()).is_ok_and(|back| back == q))
        });
    sample(text, count)
}

/// Non-negative JSON numbers: integers of every size, decimals, and any float.
fn generated_numbers(count: usize) -> Vec<Number> {
    let number = prop_oneof![
        any::<u64>().prop_map(Number::from),
        (0_u64..100_000).prop_map(Number::from),
        (1_u64..1000, 0_u32..7).prop_map(|(n, power)| Number::from(n << (10 * power))),
        (0_u64..10_000_000, 0_i32..10).prop_filter_map("finite", |(n, decimals)| {
            Number::from_f64(n as f64 / 10_f64.powi(decimals))
        }),
        any::<f64>().prop_filter_map("finite, not negative", |f| {
            Number::from_f64(f.abs()).filter(|_| f.is_finite())
        }),
    ];
    // serde_json's float parsing is not always correctly rounded: keep the numbers that
    // read back as themselves, so the number render sees is the one generated.
    let number = number.prop_filter("survives a JSON round trip", |number| {
        serde_json::from_str::<Number>(&number.to_string()).is_ok_and(|back| &back == number)
    });
    sample(number, count)
}

fn sample<S: Strategy>(strategy: S, count: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).expect("strategy yields").current())
        .collect()
}

/// A Pod whose containers' limits hold `values`, three per container.
fn pod_with_limits(name: &str, values: &[Value]) -> Value {
    let containers: Vec<Value> = values
        .chunks(RESOURCES.len())
        .enumerate()
        .map(|(index, chunk)| {
            let limits: serde_json::Map<String, Value> = RESOURCES
                .iter()
                .zip(chunk)
                .map(|(resource, value)| (resource.to_string(), value.clone()))
                .collect();
            json!({"name": format!("c{index}"), "image": "example/ok:1",
                   "resources": {"limits": limits}})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": containers}})
}

fn limit_values(pod: &Value) -> Vec<Value> {
    let mut values = Vec::new();
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for resource in RESOURCES {
            if let Some(value) = container["resources"]["limits"].get(resource) {
                values.push(value.clone());
            }
        }
    }
    values
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// Server-side apply as a dry run: the object the server would store.
async fn dry_run_apply(client: &Client, namespace: &str, object: &Value) -> kube::Result<Value> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let stored = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).dry_run(),
            &Patch::Apply(object),
        )
        .await?;
    Ok(serde_json::to_value(stored).unwrap_or_default())
}

/// (a) Every quantity the server reads back is the one we predict: the same value after
/// the milli round-up always, the canonical text we render for numbers exactly, and on
/// 1.20 the exact text for everything.
async fn server_reads_quantities_as_we_do(client: &Client, server_1_20: bool) -> anyhow::Result<()> {
    const NS: &str = "quantities-dry-run";
    create_namespace(client, NS).await?;

    let mut cases: Vec<Case> = SERVER_FACTS
        .iter()
        .map(|(sent, read_back)| Case {
            written: json!(sent),
            fact: Some(*read_back),
        })
        .collect();
    cases.extend(text_cases(ODD_BUT_ACCEPTED.iter().map(|t| t.to_string())));
    cases.extend(text_cases(generated_texts(180)));
    cases.extend(generated_numbers(180).into_iter().map(|number| Case {
        written: Value::Number(number),
        fact: None,
    }));
    let numbers = cases.iter().filter(|case| case.written.is_number()).count();

    // Numbers go through render, as in a revision; strings pass it unchanged.
    let written: Vec<Value> = cases.iter().map(|case| case.written.clone()).collect();
    let pod = pod_with_limits("quantities", &written);
    let file = SourceFile {
        path: "pod.json".into(),
        content: serde_json::to_vec(&pod)?,
    };
    let rendered = render(&[file])?;
    let rendered = &rendered[0].object;
    let sent = limit_values(rendered);
    ensure!(sent.len() == cases.len(), "render kept every limit");

    let stored = dry_run_apply(client, NS, rendered)
        .await
        .context("the server takes every rendered quantity")?;
    let read_back = limit_values(&stored);
    ensure!(read_back.len() == cases.len(), "the server kept every limit");

    let mut mismatches = Vec::new();
    for ((case, sent), read_back) in cases.iter().zip(&sent).zip(&read_back) {
        let Some(read_back_text) = read_back.as_str() else {
            bail!("the server wrote {read_back} for {}", case.written);
        };
        if !same_quantity(sent, read_back) {
            mismatches.push(format!("{sent} read back as {read_back}: not the same quantity"));
        }
        if let Value::Number(number) = &case.written {
            let canonical = canonical_text_of_number(number).context("numbers are quantities")?;
            if sent != &json!(canonical) || read_back_text != canonical {
                mismatches.push(format!(
                    "number {number} rendered as {sent}, read back as {read_back}, canonical {canonical}"
                ));
            }
        }
        if let Some(fact) = case.fact
            && server_1_20
            && read_back_text != fact
        {
            mismatches.push(format!(
                "{sent} read back as {read_back}, measured before as {fact}"
            ));
        }
        let predicted = Quantity::from_json(sent)?.round_up_to_milli().server_text();
        if server_1_20 && read_back_text != predicted {
            mismatches.push(format!("{sent} read back as {read_back}, predicted {predicted}"));
        }
    }
    ensure!(
        mismatches.is_empty(),
        "{} of {} quantities differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    ensure!(numbers >= 150, "enough numbers were tried ({numbers})");

    // Where the server itself changes the value, we predict its text but do not claim
    // the same quantity.
    let texts: Vec<Value> = CHANGED_BY_THE_SERVER.iter().map(|(t, _)| json!(t)).collect();
    let stored = dry_run_apply(client, NS, &pod_with_limits("changed", &texts)).await?;
    for ((sent, expected), read_back) in CHANGED_BY_THE_SERVER.iter().zip(limit_values(&stored)) {
        ensure!(read_back == json!(expected), "{sent} read back as {read_back}");
        ensure!(!same_quantity(&json!(sent), &read_back), "{sent} changes value");
        if server_1_20 {
            let predicted = Quantity::parse(sent)?.round_up_to_milli().server_text();
            ensure!(read_back == json!(predicted), "{sent}: predicted {predicted}");
        }
    }
    Ok(())
}

/// Malformed quantities: the server refuses each, and so does the parser.
async fn malformed_quantities_are_refused_by_both(client: &Client) -> anyhow::Result<()> {
    const NS: &str = "quantities-dry-run";
    for (index, text) in MALFORMED.iter().enumerate() {
        ensure!(Quantity::parse(text).is_err(), "{text:?} parses");
        let pod = pod_with_limits(&format!("malformed-{index}"), &[json!(text)]);
        match dry_run_apply(client, NS, &pod).await {
            Ok(stored) => bail!("the server took {text:?} as {:?}", limit_values(&stored)),
            // 1.20 answers 500 ("failed to convert new object to proper version: ...
            // quantities must match the regular expression ...") from its apply path.
            Err(kube::Error::Api(status)) => {
                ensure!(
                    status.message.contains("quantit"),
                    "{text:?}: refused for another reason: {status:?}"
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

const APPLY_NS: &str = "quantities-apply";
const OWNER: &str = "quantities-apply/app";
const APP_LABEL: &str = "quantities-apply.app";

/// A revision with quantities written as YAML numbers (and some strings the server
/// rewrites), as charts and hand-written manifests have them.
fn revision_yaml(web_cpu_request: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {APPLY_NS}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: example/ok:1
          resources:
            requests:
              cpu: {web_cpu_request}
              memory: 268435456
            limits:
              cpu: 1
              memory: "1024Mi"
              ephemeral-storage: 1.5e9
      initContainers:
        - name: init
          image: example/ok:1
          resources:
            limits: {{cpu: 0.25, memory: 100000000}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 1
  selector:
    matchLabels: {{app: db}}
  template:
    metadata:
      labels: {{app: db}}
    spec:
      containers:
        - name: db
          image: example/ok:1
          resources:
            requests: {{cpu: 0.5, memory: 536870912}}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests: {{storage: 1000000000}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: cache
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1073741824
---
apiVersion: v1
kind: ResourceQuota
metadata:
  name: compute
spec:
  hard:
    requests.cpu: 10
    limits.cpu: 20.5
    requests.memory: 17179869184
    requests.storage: "100Gi"
    pods: 20
---
apiVersion: v1
kind: LimitRange
metadata:
  name: limits
spec:
  limits:
    - type: Container
      max: {{cpu: 4, memory: 4294967296}}
      min: {{cpu: 0.1}}
      default: {{cpu: 1}}
      defaultRequest: {{cpu: 0.5}}
      maxLimitRequestRatio: {{cpu: 10}}
"#
    )
}

fn render_revision(web_cpu_request: &str) -> anyhow::Result<Vec<Manifest>> {
    let file = SourceFile {
        path: "deploy/app.yaml".into(),
        content: revision_yaml(web_cpu_request).into_bytes(),
    };
    Ok(render(&[file])?)
}

async fn apply(
    applier: &Applier,
    manifests: &[Manifest],
    previous: &[InventoryEntry],
) -> anyhow::Result<ApplyOutcome> {
    Ok(applier
        .apply(ApplyPlan {
            manifests,
            default_namespace: APPLY_NS,
            owner: OWNER,
            app_label: APP_LABEL,
            field_manager: &bosun::apply::field_manager(OWNER),
            previous_inventory: previous,
        })
        .await?)
}

fn names(entries: &[InventoryEntry]) -> Vec<String> {
    entries.iter().map(ToString::to_string).collect()
}

async fn live<K>(client: &Client, name: &str) -> anyhow::Result<Value>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object = Api::<K>::namespaced(client.clone(), APPLY_NS).get(name).await?;
    Ok(serde_json::to_value(object)?)
}

/// (b) Numeric quantities render to strings the server takes, and applying the same
/// revision again sends nothing.
async fn numeric_quantities_apply_once_then_stay_quiet(
    client: &Client,
    server_1_20: bool,
) -> anyhow::Result<()> {
    let applier = Applier::new(client.clone());
    let manifests = render_revision("0.5")?;

    if server_1_20 {
        // Why render normalizes: the 1.20 server refuses the numbers as written.
        let mut as_written = manifests[1].object.clone();
        as_written["metadata"]["namespace"] = json!("default");
        as_written["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!(0.5);
        let deployments = ApiResource::erase::<Deployment>(&());
        let error = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &deployments)
            .patch(
                "web",
                &PatchParams::apply(FIELD_MANAGER).dry_run(),
                &Patch::Apply(&as_written),
            )
            .await
            .err()
            .context("the 1.20 server takes a number as a quantity")?;
        ensure!(
            error.to_string().contains("expected string"),
            "refused for another reason: {error}"
        );
    }

    let outcome = apply(&applier, &manifests, &[]).await?;
    ensure!(
        outcome.sent.len() == manifests.len(),
        "first apply sends everything: {:?}",
        names(&outcome.sent)
    );

    let deployment = live::<Deployment>(client, "web").await?;
    let pod_spec = &deployment["spec"]["template"]["spec"];
    ensure!(
        pod_spec["containers"][0]["resources"]
            == json!({"requests": {"cpu": "500m", "memory": "268435456"},
                      "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1500M"}}),
        "Deployment resources: {}",
        pod_spec["containers"][0]["resources"]
    );
    ensure!(
        pod_spec["initContainers"][0]["resources"]["limits"] == json!({"cpu": "250m", "memory": "100M"}),
        "init container limits: {}",
        pod_spec["initContainers"][0]["resources"]
    );
    let stateful_set = live::<StatefulSet>(client, "db").await?;
    ensure!(
        stateful_set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1G",
        "StatefulSet claim: {}",
        stateful_set["spec"]["volumeClaimTemplates"][0]
    );
    let claim = live::<PersistentVolumeClaim>(client, "cache").await?;
    ensure!(
        claim["spec"]["resources"]["requests"]["storage"] == "1073741824",
        "PVC: {}",
        claim["spec"]["resources"]
    );
    let quota = live::<ResourceQuota>(client, "compute").await?;
    ensure!(
        quota["spec"]["hard"]
            == json!({"requests.cpu": "10", "limits.cpu": "20500m", "requests.memory": "17179869184",
                      "requests.storage": "100Gi", "pods": "20"}),
        "ResourceQuota: {}",
        quota["spec"]["hard"]
    );
    let limit_range = live::<LimitRange>(client, "limits").await?;
    let item = &limit_range["spec"]["limits"][0];
    ensure!(
        item["max"] == json!({"cpu": "4", "memory": "4294967296"})
            && item["min"] == json!({"cpu": "100m"})
            && item["default"]["cpu"] == "1"
            && item["defaultRequest"]["cpu"] == "500m"
            && item["maxLimitRequestRatio"] == json!({"cpu": "10"}),
        "LimitRange: {item}"
    );

    // The server rewrote "1024Mi" as "1Gi": only a comparison by value sees no change.
    ensure!(already_applied(&manifests[1].object, &deployment));
    ensure!(
        !is_subset(&manifests[1].object, &deployment),
        "a plain comparison would re-send the Deployment (the test would prove nothing)"
    );

    let again = apply(&applier, &render_revision("0.5")?, &outcome.inventory).await?;
    ensure!(
        again.sent.is_empty(),
        "idle re-apply sent {:?}",
        names(&again.sent)
    );
    ensure!(again.unchanged == manifests.len());

    // A real change of a quantity is still sent.
    let changed = apply(&applier, &render_revision("0.6")?, &outcome.inventory).await?;
    ensure!(
        names(&changed.sent) == vec![format!("Deployment {APPLY_NS}/web")],
        "changed request sent {:?}",
        names(&changed.sent)
    );
    let deployment = live::<Deployment>(client, "web").await?;
    ensure!(
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "600m"
    );
    let quiet = apply(&applier, &render_revision("0.6")?, &outcome.inventory).await?;
    ensure!(
        quiet.sent.is_empty(),
        "re-apply after the change sent {:?}",
        names(&quiet.sent)
    );
    Ok(())
}
