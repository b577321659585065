//! The install: charts/bosun linted and rendered with Helm's own library
//! (helm-python-sdk, through manifests/render.py), manifests/install.yaml and the
//! chart's CRDs kept up to date, and the rendered chart applied to a real API server,
//! where the controller runs with the token of the chart's own ServiceAccount: it
//! reconciles an app applied as the tenant's account the chart configures, and the API
//! server refuses it what its RBAC does not grant.

mod support;

use std::process::Command;
use std::time::Duration;

use bosun::api::BlockReason;
use bosun::api::Phase;
use bosun_devenv::example::{ExampleRevision, workload_only_runbook_yaml};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use support::chart::{
    CONTROLLER_ACCOUNT, account_credentials, apply_rendered, controller_env, create_namespace, find, kinds,
    render_py, root, template,
};
use support::{Harness, status};

/// The release namespace manifests/install.yaml installs into.
const INSTALL_NS: &str = "bosun-system";
/// The default of `controller.defaultServiceAccount`.
const TENANT_ACCOUNT: &str = "bosun-deployer";
const TENANT_NS: &str = "shop";
/// The chart's value onboarding [`TENANT_NS`].
const ONBOARD_SHOP: &str = "tenants.namespaces={shop}";
/// A namespace set up like [`TENANT_NS`] but not onboarded.
const OUTSIDE_NS: &str = "outside";

fn verbs_on(rules: &Value, group: &str, resource: &str) -> Vec<String> {
    let mut verbs = Vec::new();
    for rule in rules.as_array().into_iter().flatten() {
        let has = |key: &str, wanted: &str| {
            rule[key]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v == wanted || v == "*")
        };
        if has("apiGroups", group) && has("resources", resource) {
            verbs.extend(
                rule["verbs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from)),
            );
        }
    }
    verbs.sort();
    verbs.dedup();
    verbs
}

#[test]
fn chart_lints_clean_with_helm_for_every_scope_and_option() {
    for sets in [
        vec![],
        vec!["rbac.scope=namespace"],
        vec![
            "tenants.namespaces={shop,payments}",
            "tenants.serviceAccounts={bosun-deployer}",
        ],
        vec![
            "serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
            "rbac.applyAsController=true",
            "controller.defaultServiceAccount=",
            "controller.logFormat=text",
        ],
    ] {
        let mut args = vec!["lint"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let (ok, stdout, stderr) = render_py(&args);
        assert!(ok, "helm lint (strict) with {sets:?}:\n{stdout}\n{stderr}");
        assert!(stdout.contains("\"total_charts_linted\": 1"), "{stdout}");
    }
    // Values the chart refuses to render.
    for (set, message) in [
        (
            "controller.logFormat=xml",
            "controller.logFormat must be json or text",
        ),
        ("rbac.scope=everywhere", "rbac.scope must be cluster or namespace"),
        (
            "controller.defaultServiceAccount=",
            "set controller.defaultServiceAccount",
        ),
    ] {
        let (ok, _, stderr) = render_py(&["template", "--set", set]);
        assert!(!ok && stderr.contains(message), "{set}: {stderr}");
    }
    // Read rights as bosun itself are top-level resources, never `*` or a subresource;
    // a namespace-scoped install has no other tenant than its namespace.
    for (sets, message) in [
        (
            vec![
                "rbac.readResources[0].apiGroups={}",
                "rbac.readResources[0].resources={*}",
            ],
            "rbac.readResources lists top-level resources only, not \"*\"",
        ),
        (
            vec![
                "rbac.readResources[0].apiGroups={}",
                "rbac.readResources[0].resources={nodes/proxy}",
            ],
            "rbac.readResources lists top-level resources only, not \"nodes/proxy\"",
        ),
        (
            vec!["rbac.scope=namespace", "tenants.namespaces={shop}"],
            "tenants.namespaces needs rbac.scope=cluster",
        ),
    ] {
        let mut args = vec!["template"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let (ok, _, stderr) = render_py(&args);
        assert!(!ok && stderr.contains(message), "{sets:?}: {stderr}");
    }
}

#[test]
fn install_yaml_is_the_chart_rendered_with_defaults() {
    let (ok, rendered, stderr) = render_py(&["install-yaml"]);
    assert!(ok, "{stderr}");
    let checked_in = std::fs::read_to_string(root().join("manifests/install.yaml")).unwrap_or_default();
    assert!(
        checked_in == rendered,
        "manifests/install.yaml is stale: run `python3 manifests/render.py install-yaml > manifests/install.yaml` and commit the result"
    );
    let objects: Vec<Value> = serde_saphyr::from_multiple(&checked_in).expect("install.yaml is YAML");
    assert_eq!(objects[0]["kind"], "Namespace");
    assert_eq!(objects[0]["metadata"]["name"], INSTALL_NS);
}

#[test]
fn chart_crds_are_the_generated_crds() {
    for (file, crd) in bosun::crdgen::crds() {
        let generated = bosun::crdgen::to_yaml(&crd).expect("CRD serializes");
        let in_chart =
            std::fs::read_to_string(root().join("charts/bosun/crds").join(file)).unwrap_or_default();
        assert!(
            in_chart == generated,
            "charts/bosun/crds/{file} differs from crds/{file}: copy crds/*.yaml into charts/bosun/crds/"
        );
    }
}

#[test]
fn defaults_are_hardened_and_least_privilege() {
    let objects = template(INSTALL_NS, &[]);
    let deployment = find(&objects, "Deployment", "bosun");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], CONTROLLER_ACCOUNT);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let env: Vec<(&str, &str)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    for expected in [
        ("BOSUN_DEFAULT_SERVICE_ACCOUNT", TENANT_ACCOUNT),
        ("BOSUN_LEADER_ELECT", "true"),
        ("BOSUN_LOG_JSON", "true"),
        ("BOSUN_CONCURRENCY", "16"),
    ] {
        assert!(env.contains(&expected), "{expected:?} not in {env:?}");
    }
    // The Git cache is a writable emptyDir, as the root file system is read-only.
    let cache_dir = env.iter().find(|(k, _)| *k == "BOSUN_CACHE_DIR").unwrap().1;
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == cache_dir)
        .expect("the cache directory is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["emptyDir"].is_object(), "{volume}");
    assert_eq!(
        find(&objects, "Service", "bosun")["spec"]["ports"][0]["port"],
        8080
    );
    assert_eq!(
        find(&objects, "PodDisruptionBudget", "bosun")["spec"]["minAvailable"],
        1
    );

    // As itself, cluster-wide: its own objects and read-only caches of an explicit
    // list of kinds; no write on the apps' kinds (those go out as the tenant's
    // account), none on RBAC or Namespaces, no impersonation, no Secret write.
    let rules = &find(&objects, "ClusterRole", "bosun")["rules"];
    for rule in rules.as_array().unwrap() {
        for key in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[key].as_array().unwrap().contains(&json!("*")),
                "a wildcard matches every kind and subresource (nodes/proxy, pods/exec, every Secret): {rule}"
            );
        }
    }
    for (group, resource) in [
        ("", "serviceaccounts"),
        ("", "namespaces"),
        ("", "configmaps"),
        ("", "secrets"),
        ("apps", "deployments"),
        ("batch", "jobs"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("bosun.dev", "runbooks"),
    ] {
        assert_eq!(
            verbs_on(rules, group, resource),
            ["get", "list", "watch"],
            "{group}/{resource}"
        );
    }
    assert_eq!(
        verbs_on(rules, "bosun.dev", "appdeployments/status"),
        ["get", "patch", "update"]
    );
    assert_eq!(
        verbs_on(rules, "authorization.k8s.io", "subjectaccessreviews"),
        ["create"],
        "the reads made for an app are authorised with SubjectAccessReviews"
    );
    for (group, resource) in [
        ("", "nodes/proxy"),
        ("", "pods/exec"),
        ("", "pods/attach"),
        ("", "serviceaccounts/token"),
        ("", "nodes"),
        ("", "users"),
        ("", "groups"),
    ] {
        assert!(verbs_on(rules, group, resource).is_empty(), "{group}/{resource}");
    }
    // Every subresource granted is named, and is one bosun itself uses.
    let subresources: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap())
        .filter_map(|r| r.as_str())
        .filter(|r| r.contains('/'))
        .collect();
    assert_eq!(subresources, ["appdeployments/status", "pods/log"]);
    // Whatever is bound cluster-wide may neither impersonate nor write Secrets.
    for binding in objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
        let role = find(
            &objects,
            "ClusterRole",
            binding["roleRef"]["name"].as_str().unwrap(),
        );
        let text = role["rules"].to_string();
        assert!(
            !text.contains("impersonate"),
            "cluster-wide impersonation: {role}"
        );
        let secret_verbs = verbs_on(&role["rules"], "", "secrets");
        for verb in ["create", "update", "patch", "delete"] {
            assert!(
                !secret_verbs.iter().any(|v| v == verb),
                "cluster-wide Secret {verb}: {role}"
            );
        }
    }

    // In a tenant namespace: impersonation of its accounts and the snapshot Secrets,
    // granted by a ClusterRole that only RoleBindings of onboarded namespaces use.
    let tenant = &find(&objects, "ClusterRole", "bosun-tenant")["rules"];
    assert_eq!(verbs_on(tenant, "", "serviceaccounts"), ["impersonate"]);
    assert_eq!(
        verbs_on(tenant, "", "secrets"),
        ["create", "delete", "patch", "update"]
    );
    assert!(!tenant.to_string().contains("\"*\""), "{tenant}");
    let tenant_bindings = |objects: &[Value]| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["roleRef"]["name"] == "bosun-tenant")
            .map(|o| {
                assert_eq!(o["kind"], "RoleBinding", "{o}");
                assert_eq!(o["roleRef"]["kind"], "ClusterRole");
                assert_eq!(
                    o["subjects"],
                    json!([{"kind": "ServiceAccount", "name": CONTROLLER_ACCOUNT, "namespace": INSTALL_NS}])
                );
                o["metadata"]["namespace"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert!(
        tenant_bindings(&objects).is_empty(),
        "no namespace is onboarded by default"
    );
    let onboarded = template(INSTALL_NS, &["tenants.namespaces={shop,payments}"]);
    assert_eq!(tenant_bindings(&onboarded), ["shop", "payments"]);
    let named = template(INSTALL_NS, &["tenants.serviceAccounts={bosun-deployer}"]);
    let impersonation = named
        .iter()
        .find(|o| o["metadata"]["name"] == "bosun-tenant")
        .unwrap()["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["verbs"] == json!(["impersonate"]))
        .unwrap()
        .clone();
    assert_eq!(impersonation["resourceNames"], json!(["bosun-deployer"]));
    assert!(!env.iter().any(|(k, _)| *k == "BOSUN_SINGLE_TENANT"), "{env:?}");

    // With applyAsController the controller may read and write every kind, says so,
    // and runs single-tenant.
    let broad = template(INSTALL_NS, &["rbac.applyAsController=true"]);
    let rules = &find(&broad, "ClusterRole", "bosun")["rules"];
    assert!(verbs_on(rules, "apps", "deployments").contains(&"delete".to_string()));
    let broad_env = &find(&broad, "Deployment", "bosun")["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        broad_env
            .as_array()
            .unwrap()
            .contains(&json!({"name": "BOSUN_SINGLE_TENANT", "value": "true"})),
        "{broad_env}"
    );

    // The namespace-scoped install has no cluster-wide object but the CRDs.
    let scoped = template("team-a", &["rbac.scope=namespace"]);
    let kinds = kinds(&scoped);
    assert!(
        !kinds.contains(&"ClusterRole") && !kinds.contains(&"ClusterRoleBinding"),
        "{kinds:?}"
    );
    let role = find(&scoped, "Role", "bosun");
    assert_eq!(role["metadata"]["namespace"], "team-a");
    assert!(!role["rules"].to_string().contains("clusterrunbooks"), "{role}");
    // Its namespace is its tenant: impersonation and snapshots there, and the reads
    // for apps checked with LocalSubjectAccessReviews (a Role cannot grant the
    // cluster-scoped SubjectAccessReview).
    assert_eq!(
        verbs_on(&role["rules"], "", "serviceaccounts"),
        ["get", "impersonate", "list", "watch"]
    );
    assert!(verbs_on(&role["rules"], "", "secrets").contains(&"create".to_string()));
    assert_eq!(
        verbs_on(
            &role["rules"],
            "authorization.k8s.io",
            "localsubjectaccessreviews"
        ),
        ["create"]
    );
}

/// The tenant's side of the multi-tenant mode: the ServiceAccount the chart's
/// `controller.defaultServiceAccount` names, allowed to edit its own namespace (the
/// built-in ClusterRole `edit`, bound there): what its apps deploy, and what bosun
/// reads on their behalf (checked for this account).
async fn set_up_tenant(harness: &Harness, tenant: &str) {
    let client = &harness.client;
    create_namespace(client, tenant).await;
    let params = PatchParams::apply("bosun-install-test");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), tenant);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": TENANT_ACCOUNT}})).unwrap();
    accounts
        .patch(TENANT_ACCOUNT, &params, &Patch::Apply(&account))
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": TENANT_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": TENANT_ACCOUNT, "namespace": tenant}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), tenant)
        .patch(TENANT_ACCOUNT, &params, &Patch::Apply(&binding))
        .await
        .unwrap();
}

/// The chart installed with its defaults into bosun-system, `shop` onboarded, the
/// tenant's account in `shop`, and the example app there naming no ServiceAccount
/// (the chart's default account applies it): the rendered objects and the revision.
async fn install_with_tenant_app(harness: &Harness) -> (Vec<Value>, String) {
    create_namespace(&harness.client, INSTALL_NS).await;
    let objects = template(INSTALL_NS, &[ONBOARD_SHOP]);
    apply_rendered(&harness.client, &objects).await;
    set_up_tenant(harness, TENANT_NS).await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(TENANT_NS, "quick"))
        .await;
    let repo = harness.repo("shop");
    let revision = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    harness
        .apply_example_app(TENANT_NS, "shop", repo.name(), Some("quick"), "2s")
        .await;
    (objects, revision)
}

fn is_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(ref status)) if status.code == 403)
}

/// What the API server answers `client` for one request's attributes
/// (SelfSubjectAccessReview: the real RBAC decision, nothing is done).
async fn may(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, subresource)) => (resource, Some(subresource)),
        None => (resource, None),
    };
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource,
            "subresource": subresource, "namespace": namespace,
        }}
    }))
    .unwrap();
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview");
    answer.status.expect("review answered").allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_as_the_charts_service_account_reconciles_onboarded_tenants_only() {
    let mut harness = Harness::start().await;
    harness.run_as_chart_account(&[ONBOARD_SHOP]).await;
    // Two tenants alike (the chart's default account, allowed to edit its namespace),
    // one onboarded, the other not.
    let repo = harness.repo("shop");
    let revision = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    for namespace in [TENANT_NS, OUTSIDE_NS] {
        set_up_tenant(&harness, namespace).await;
        harness
            .apply_runbook(&workload_only_runbook_yaml(namespace, "quick"))
            .await;
        harness
            .apply_example_app(namespace, "shop", repo.name(), Some("quick"), "2s")
            .await;
    }
    harness.start_controller();
    let healthy = harness
        .wait_for_phase(TENANT_NS, "shop", Phase::Healthy, &revision)
        .await;
    assert_eq!(
        harness.image_of(TENANT_NS, "backend").await,
        "example/litevault-backend:1.0"
    );
    // Its snapshot was stored in the tenant's namespace (the tenant role's Secret write).
    let snapshot = status(&healthy).current_snapshot.clone().expect("a snapshot");
    let stored = Api::<Secret>::namespaced(harness.client.clone(), TENANT_NS)
        .get(&snapshot)
        .await
        .expect("the snapshot Secret is in the tenant's namespace");
    assert_eq!(stored.type_.as_deref(), Some("bosun.dev/snapshot"));

    // The namespace not onboarded: Blocked, naming the impersonation it was refused,
    // and nothing of the app created there.
    let blocked = harness
        .wait_for(
            OUTSIDE_NS,
            "shop",
            "Blocked (Forbidden)",
            Duration::from_secs(60),
            |app| {
                app.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Blocked && s.blocked.is_some())
            },
        )
        .await;
    let refusal = status(&blocked).blocked.clone().unwrap();
    assert_eq!(refusal.reason, BlockReason::Forbidden, "{refusal:?}");
    // The first thing refused there (the snapshot, or the impersonated apply) says
    // the namespace is not onboarded.
    assert!(
        refusal.message.contains(&format!("in namespace {OUTSIDE_NS}"))
            && refusal.message.contains("not onboarded as a bosun tenant"),
        "{}",
        refusal.message
    );
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), OUTSIDE_NS);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "an app of a namespace not onboarded deployed something"
    );

    // The app's objects went out as the tenant's account, never as the controller, and
    // its writes outside the onboarded namespace are only about its own AppDeployment.
    let controller_user = format!("system:serviceaccount:{INSTALL_NS}:{CONTROLLER_ACCOUNT}");
    let tenant_user = format!("system:serviceaccount:{TENANT_NS}:{TENANT_ACCOUNT}");
    // Every request sent with the controller's token, impersonating or not.
    let writes: Vec<_> = harness
        .control_plane
        .audit_writes()
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.user == controller_user && !w.dry_run)
        .collect();
    let applied: Vec<_> = writes
        .iter()
        .filter(|w| w.resource == "deployments" && !w.dry_run)
        .collect();
    assert!(!applied.is_empty(), "no Deployment written by the controller");
    for write in &applied {
        assert_eq!(write.user, controller_user);
        assert_eq!(
            write.impersonated_user.as_deref(),
            Some(tenant_user.as_str()),
            "{write:#?}"
        );
    }
    for write in writes
        .iter()
        .filter(|w| w.namespace.as_deref() == Some(OUTSIDE_NS) && w.succeeded())
    {
        assert!(
            matches!(write.resource.as_str(), "appdeployments" | "events"),
            "the controller wrote in a namespace not onboarded: {write:#?}"
        );
    }

    // What the chart grants and refuses, as the API server decides it for this token.
    let (kubeconfig, as_controller) = account_credentials(&harness, INSTALL_NS, CONTROLLER_ACCOUNT).await;
    for (verb, group, resource, namespace, allowed) in [
        ("impersonate", "", "serviceaccounts", Some(TENANT_NS), true),
        ("impersonate", "", "serviceaccounts", Some(OUTSIDE_NS), false),
        ("impersonate", "", "serviceaccounts", Some("kube-system"), false),
        ("impersonate", "", "users", None, false),
        ("impersonate", "", "groups", None, false),
        ("create", "", "secrets", Some(TENANT_NS), true),
        ("create", "", "secrets", Some(OUTSIDE_NS), false),
        ("create", "", "secrets", Some("kube-system"), false),
        ("delete", "", "secrets", Some("kube-system"), false),
        ("create", "", "serviceaccounts/token", Some(TENANT_NS), false),
        ("get", "", "nodes/proxy", None, false),
        ("get", "", "pods/exec", Some("kube-system"), false),
        ("create", "", "pods/exec", Some("kube-system"), false),
        ("get", "", "nodes", None, false),
        ("create", "", "configmaps", Some(TENANT_NS), false),
        ("delete", "", "namespaces", None, false),
        ("delete", "rbac.authorization.k8s.io", "clusterroles", None, false),
        (
            "create",
            "authorization.k8s.io",
            "subjectaccessreviews",
            None,
            true,
        ),
        ("list", "", "configmaps", None, true),
        ("watch", "apps", "deployments", None, true),
        ("list", "", "namespaces", None, true),
    ] {
        assert_eq!(
            may(&as_controller, verb, group, resource, namespace).await,
            allowed,
            "{verb} {group}/{resource} in {namespace:?}"
        );
    }
    // Impersonation as the API server checks it on a real request: an account of the
    // onboarded namespace may be borrowed, kube-system's may not.
    let impersonating = |user: &str| {
        let kubeconfig = kubeconfig.clone();
        let user = user.to_string();
        async move {
            let kubeconfig = Kubeconfig::read_from(&kubeconfig).unwrap();
            let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
            config.auth_info.impersonate = Some(user);
            kube::Client::try_from(config).unwrap()
        }
    };
    let as_tenant = impersonating(&tenant_user).await;
    Api::<ConfigMap>::namespaced(as_tenant, TENANT_NS)
        .list(&ListParams::default())
        .await
        .expect("the onboarded tenant's account may be impersonated");
    let as_system = impersonating("system:serviceaccount:kube-system:namespace-controller").await;
    assert!(is_forbidden(
        Api::<ConfigMap>::namespaced(as_system, "kube-system")
            .list(&ListParams::default())
            .await
    ));
    assert!(
        harness.app(TENANT_NS, "shop").await.metadata.finalizers.is_some(),
        "the finalizer was added as the chart's account"
    );
}

/// A kind the chart does not let the controller list (here Services, left out of
/// `rbac.readResources`) is not cached: the watch is refused once, said once at info,
/// and the app's objects of that kind are read as the app's own account instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_the_controller_may_not_list_is_read_as_the_app() {
    let mut harness = Harness::start().await;
    harness
        .run_as_chart_account(&[
            ONBOARD_SHOP,
            "rbac.readResources[0].apiGroups={apps},rbac.readResources[0].resources={deployments}",
        ])
        .await;
    set_up_tenant(&harness, TENANT_NS).await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(TENANT_NS, "quick"))
        .await;
    let repo = harness.repo("shop");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    harness
        .apply_example_app(TENANT_NS, "shop", repo.name(), Some("quick"), "2s")
        .await;
    harness.start_controller();
    harness
        .wait_for_phase(TENANT_NS, "shop", Phase::Healthy, &first)
        .await;
    // A second revision: the Service is judged against its live object again.
    let second = ExampleRevision::good("1.1").commit_to(&repo, "v1.1").unwrap();
    harness
        .wait_for_phase(TENANT_NS, "shop", Phase::Healthy, &second)
        .await;
    // The Service was judged against its live object, read as the tenant (the
    // controller's own read would have been refused, and the app Blocked); what was
    // written of it went out as the tenant too.
    let tenant_user = format!("system:serviceaccount:{TENANT_NS}:{TENANT_ACCOUNT}");
    let controller_user = format!("system:serviceaccount:{INSTALL_NS}:{CONTROLLER_ACCOUNT}");
    let service_writes: Vec<_> = harness
        .control_plane
        .audit_writes()
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.user == controller_user && w.resource == "services")
        .collect();
    assert!(!service_writes.is_empty());
    for write in &service_writes {
        assert_eq!(
            write.impersonated_user.as_deref(),
            Some(tenant_user.as_str()),
            "{write:#?}"
        );
    }
    let log = harness.controller_log_text();
    let refused = log
        .lines()
        .filter(|l| l.contains("may not list this kind") && l.contains("services"))
        .count();
    assert_eq!(refused, 1, "said once, not retried\n{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("watch error") && l.contains("services")),
        "the refused watch is not retried as an error\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_scoped_install_reaches_only_its_namespace() {
    let mut harness = Harness::start().await;
    let own = "team-a";
    let other = "team-b";
    create_namespace(&harness.client, own).await;
    create_namespace(&harness.client, other).await;
    let objects = template(own, &["rbac.scope=namespace"]);
    assert!(!kinds(&objects).contains(&"ClusterRole"));
    apply_rendered(&harness.client, &objects).await;
    let (kubeconfig, as_controller) = account_credentials(&harness, own, CONTROLLER_ACCOUNT).await;

    // Its own namespace: what the Role grants.
    let own_secrets: Api<Secret> = Api::namespaced(as_controller.clone(), own);
    own_secrets
        .list(&ListParams::default())
        .await
        .expect("Secrets of its own namespace are readable");
    let snapshot: Secret = serde_json::from_value(json!({
        "metadata": {"name": "snapshot-probe"}, "type": "bosun.dev/snapshot", "stringData": {"a": "b"}
    }))
    .unwrap();
    own_secrets
        .create(&PostParams::default(), &snapshot)
        .await
        .expect("snapshot Secrets may be created in its own namespace");
    let apps = Api::<bosun::api::AppDeployment>::namespaced(as_controller.clone(), own);
    apps.list(&ListParams::default())
        .await
        .expect("AppDeployments of its own namespace are readable");

    // Anything elsewhere, or cluster-wide, is refused.
    let other_secrets: Api<Secret> = Api::namespaced(as_controller.clone(), other);
    assert!(is_forbidden(other_secrets.list(&ListParams::default()).await));
    assert!(is_forbidden(other_secrets.get("default-token").await));
    let all_apps = Api::<bosun::api::AppDeployment>::all(as_controller.clone());
    assert!(is_forbidden(all_apps.list(&ListParams::default()).await));
    let cluster_runbooks = Api::<bosun::api::ClusterRunbook>::all(as_controller.clone());
    assert!(is_forbidden(cluster_runbooks.list(&ListParams::default()).await));
    let namespaces: Api<Namespace> = Api::all(as_controller.clone());
    assert!(is_forbidden(namespaces.list(&ListParams::default()).await));

    // The controller itself, as that account with the chart's environment
    // (BOSUN_WATCH_NAMESPACE): it reconciles the app of its namespace, applied as the
    // namespace's `bosun-deployer`, and never sees the app of the other namespace.
    set_up_tenant(&harness, own).await;
    set_up_tenant(&harness, other).await;
    let repo = harness.repo("team");
    let revision = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    for namespace in [own, other] {
        harness
            .apply_runbook(&workload_only_runbook_yaml(namespace, "quick"))
            .await;
        harness
            .apply_example_app(namespace, "team", repo.name(), Some("quick"), "2s")
            .await;
    }
    let env = controller_env(&objects, own);
    assert!(
        env.contains(&("BOSUN_WATCH_NAMESPACE".to_string(), own.to_string())),
        "{env:?}"
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    harness.start_controller_as(&kubeconfig, &[], &env);
    harness
        .wait_for_phase(own, "team", Phase::Healthy, &revision)
        .await;
    assert_eq!(
        harness.image_of(own, "backend").await,
        "example/litevault-backend:1.0"
    );
    let elsewhere = harness.app(other, "team").await;
    assert!(
        elsewhere.status.is_none() && elsewhere.metadata.finalizers.is_none(),
        "the app of another namespace was touched: {elsewhere:#?}"
    );
    let log = harness.controller_log_text();
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the controller asked for what its namespace-scoped RBAC does not grant\n{log}"
    );
}

/// The image of scripts/build-image.sh, run with podman on the host network as the
/// chart runs it (non-root, read-only root file system, writable cache, every
/// capability dropped), with the chart's ServiceAccount token: it reconciles the app.
/// Run it after building the image:
/// `cargo nextest run --all-features --test install --run-ignored only`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and the image of scripts/build-image.sh"]
async fn image_reconciles_under_podman() {
    let image = std::env::var("BOSUN_IMAGE")
        .unwrap_or_else(|_| format!("localhost/bosun:{}", env!("CARGO_PKG_VERSION")));
    let harness = Harness::start().await;
    let (objects, revision) = install_with_tenant_app(&harness).await;

    // A kubeconfig the container's user 65532 can read, the CA inlined.
    let token = harness
        .control_plane
        .service_account_token(INSTALL_NS, CONTROLLER_ACCOUNT)
        .await
        .unwrap();
    let original = harness.control_plane.token_kubeconfig("podman", &token).unwrap();
    let mut kubeconfig: Value = serde_saphyr::from_str(&std::fs::read_to_string(&original).unwrap()).unwrap();
    let ca_path = kubeconfig["clusters"][0]["cluster"]["certificate-authority"]
        .as_str()
        .unwrap()
        .to_string();
    let ca = std::fs::read(&ca_path).unwrap();
    let cluster = &mut kubeconfig["clusters"][0]["cluster"];
    cluster.as_object_mut().unwrap().remove("certificate-authority");
    // ByteString serializes as base64, as kubeconfig data fields are.
    cluster["certificate-authority-data"] = serde_json::to_value(k8s_openapi::ByteString(ca)).unwrap();
    let mounted = harness.dir.path().join("container-kubeconfig");
    std::fs::write(&mounted, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&mounted, std::fs::Permissions::from_mode(0o644)).unwrap();

    let name = format!("bosun-install-test-{}", std::process::id());
    let log = harness.dir.path().join("container.log");
    let mut command = Command::new("podman");
    command.args([
        "--storage-driver",
        "vfs",
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--name",
        &name,
    ]);
    // The sandbox this was built in: no CAP_SYS_RESOURCE (limits may only be lowered)
    // and hybrid cgroups, which crun refuses and runc accepts.
    command.args([
        "--network",
        "host",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
    ]);
    // The chart's writable emptyDir for the Git cache: a directory of user 65532.
    let cache = harness.dir.path().join("container-cache");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(65532), Some(65532)).unwrap();
    let cache_mount = format!("{}:/var/cache/bosun:rw", cache.display());
    command.args(["--read-only", "-v", &cache_mount]);
    command.args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]);
    command.args(["-v", &format!("{}:/kubeconfig:ro", mounted.display())]);
    command.args(["-e", "KUBECONFIG=/kubeconfig"]);
    for (key, value) in controller_env(&objects, INSTALL_NS) {
        if key != "BOSUN_CACHE_DIR" {
            command.args(["-e", &format!("{key}={value}")]);
        }
    }
    command.arg(&image).arg("controller");
    let mut child = command
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err.log")).unwrap())
        .spawn()
        .expect("podman runs");
    let healthy = tokio::time::timeout(
        Duration::from_secs(120),
        harness.wait_for_phase(TENANT_NS, "shop", Phase::Healthy, &revision),
    )
    .await;
    let _ = Command::new("podman")
        .args(["--storage-driver", "vfs", "--runtime", "runc", "kill", &name])
        .status();
    let _ = child.wait();
    let output = format!(
        "{}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(log.with_extension("err.log")).unwrap_or_default()
    );
    assert!(
        healthy.is_ok(),
        "the container did not reconcile the app:\n{output}"
    );
    let writes = harness.control_plane.audit_writes().await.unwrap();
    let controller_user = format!("system:serviceaccount:{INSTALL_NS}:{CONTROLLER_ACCOUNT}");
    assert!(
        writes
            .iter()
            .any(|w| w.user == controller_user && w.resource == "deployments"),
        "no write by the chart's account:\n{output}"
    );
}
