//! The control plane's view of who wrote what: the audit log of write requests,
//! the controller's own identity, ServiceAccount tokens and impersonation, and
//! the API server's request metrics.

mod support;

use bosun_devenv::{
    ADMIN_USER, CONTROLLER_USER, ControlPlane, ControlPlaneOptions, REQUEST_TOTAL, sum_samples,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::init_tracing;

const NS: &str = "audited";
const OTHER_NS: &str = "elsewhere";
const DEPLOYER: &str = "deployer";
const USER_AGENT: &str = "bosun-test-controller/1";

/// Server-side applies `object` as field manager `manager`.
async fn apply<K>(api: &Api<K>, manager: &str, object: serde_json::Value, dry_run: bool) -> kube::Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().expect("a name").to_owned();
    let mut params = PatchParams::apply(manager).force();
    params.dry_run = dry_run;
    api.patch(&name, &params, &Patch::Apply(&object)).await
}

fn config_map(name: &str, value: &str) -> serde_json::Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name }, "data": { "value": value } })
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
    apply(&namespaces, "bosun-test", object, false).await?;
    Ok(())
}

/// The `apiserver_request_total` of server-side applies of ConfigMaps.
async fn config_map_applies(control_plane: &ControlPlane, dry_run: &str) -> anyhow::Result<f64> {
    let metrics = control_plane.apiserver_metrics().await?;
    let filters = [
        ("verb", "APPLY"),
        ("resource", "configmaps"),
        ("dry_run", dry_run),
    ];
    sum_samples(&metrics, REQUEST_TOTAL, &filters)
}

#[tokio::test]
async fn audit_log_tells_the_controller_writes_from_the_tests() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let admin = control_plane.client();
    namespace(&admin, NS).await?;
    let applies_before = config_map_applies(&control_plane, "").await?;
    let dry_run_applies_before = config_map_applies(&control_plane, "All").await?;
    let controller_writes_before = control_plane.controller_writes().await?;
    assert!(
        controller_writes_before.is_empty(),
        "{controller_writes_before:#?}"
    );

    // The test writes as admin, the controller as bosun.
    let admin_config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    apply(
        &admin_config_maps,
        "bosun-test",
        config_map("from-test", "1"),
        false,
    )
    .await?;
    // kube's client sends no User-Agent of its own; a controller can add one.
    let controller = client_for(control_plane.controller_kubeconfig_path(), Some(USER_AGENT)).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(controller.clone(), NS);
    apply(&config_maps, "bosun", config_map("from-controller", "1"), true).await?;
    apply(&config_maps, "bosun", config_map("from-controller", "1"), false).await?;
    apply(&config_maps, "bosun", config_map("from-controller", "2"), false).await?;
    let without_user_agent = control_plane.controller_client().await?;
    Api::<ConfigMap>::namespaced(without_user_agent, NS)
        .delete("from-controller", &DeleteParams::default())
        .await?;
    // Reads are not audited.
    config_maps.list(&Default::default()).await?;

    let writes = control_plane.controller_writes().await?;
    let summary: Vec<(&str, Option<u16>)> = writes.iter().map(|w| (w.verb.as_str(), w.code)).collect();
    assert_eq!(
        summary,
        [("patch", Some(201)), ("patch", Some(200)), ("delete", Some(200))],
        "{writes:#?}"
    );
    let create = &writes[0];
    assert_eq!(create.user, CONTROLLER_USER);
    assert_eq!(create.impersonated_user, None);
    assert_eq!((create.group.as_str(), create.version.as_str()), ("", "v1"));
    assert_eq!(create.resource, "configmaps");
    assert_eq!(create.subresource, None);
    assert_eq!(create.namespace.as_deref(), Some(NS));
    assert_eq!(create.name.as_deref(), Some("from-controller"));
    assert_eq!(create.user_agent, USER_AGENT);
    assert_eq!(writes[2].user_agent, "");
    assert!(create.received_at <= create.completed_at);
    assert!(writes.windows(2).all(|w| w[0].received_at <= w[1].received_at));

    let all = control_plane.audit_writes().await?;
    let dry_run: Vec<_> = all.iter().filter(|w| w.dry_run).collect();
    assert_eq!(dry_run.len(), 1, "{dry_run:#?}");
    assert_eq!(dry_run[0].user, CONTROLLER_USER);
    assert!(dry_run[0].request_uri.contains("dryRun=All"));
    let from_test: Vec<_> = all
        .iter()
        .filter(|w| w.name.as_deref() == Some("from-test"))
        .collect();
    assert_eq!(from_test.len(), 1);
    assert_eq!(from_test[0].user, ADMIN_USER);
    let log = std::fs::read_to_string(control_plane.audit_log_path())?;
    assert!(!log.contains("\"verb\":\"list\""), "reads are not logged");

    // The metrics count the same applies, without telling who sent them.
    let applies = config_map_applies(&control_plane, "").await? - applies_before;
    let dry_run_applies = config_map_applies(&control_plane, "All").await? - dry_run_applies_before;
    eprintln!("apiserver_request_total APPLY configmaps: {applies} real, {dry_run_applies} dry run");
    assert_eq!(applies, 3.0, "one by the test, two by the controller");
    assert_eq!(dry_run_applies, 1.0);

    // A ServiceAccount that may manage ConfigMaps in NS only.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    let account = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": DEPLOYER } });
    accounts
        .create(&PostParams::default(), &serde_json::from_value(account)?)
        .await?;
    let roles: Api<Role> = Api::namespaced(admin.clone(), NS);
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": { "name": "configmaps" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"] }],
    });
    apply(&roles, "bosun-test", role, false).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), NS);
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": { "name": "deployer-configmaps" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmaps" },
        "subjects": [{ "kind": "ServiceAccount", "name": DEPLOYER, "namespace": NS }],
    });
    apply(&bindings, "bosun-test", binding, false).await?;
    namespace(&admin, OTHER_NS).await?;
    let service_account_user = format!("system:serviceaccount:{NS}:{DEPLOYER}");

    // Its own token, through a kubeconfig of its own.
    let token = control_plane.service_account_token(NS, DEPLOYER).await?;
    let kubeconfig = control_plane.token_kubeconfig(DEPLOYER, &token)?;
    let as_account = client_for(&kubeconfig, None).await?;
    let own: Api<ConfigMap> = Api::namespaced(as_account.clone(), NS);
    apply(&own, "deployer", config_map("from-account", "1"), false).await?;
    let foreign: Api<ConfigMap> = Api::namespaced(as_account, OTHER_NS);
    let refused = refusal(apply(&foreign, "deployer", config_map("x", "1"), false).await)?;
    assert_eq!(refused.code, 403);
    let account_writes = control_plane.writes_by(&service_account_user).await?;
    // Refused writes count too: they were sent.
    assert_eq!(account_writes.len(), 2, "{account_writes:#?}");
    assert!(account_writes[0].succeeded() && !account_writes[1].succeeded());
    assert_eq!(account_writes[0].user, service_account_user);

    // The same rights through impersonation by the admin.
    let impersonating = control_plane.impersonating_client(&service_account_user).await?;
    let own: Api<ConfigMap> = Api::namespaced(impersonating.clone(), NS);
    apply(&own, "deployer", config_map("impersonated", "1"), false).await?;
    let foreign: Api<ConfigMap> = Api::namespaced(impersonating, OTHER_NS);
    let refused = refusal(apply(&foreign, "deployer", config_map("settings", "1"), false).await)?;
    eprintln!(
        "impersonated apply in another namespace: code={} reason={:?} message={:?} details={:?}",
        refused.code, refused.reason, refused.message, refused.details
    );
    assert_eq!(refused.code, 403);
    assert_eq!(refused.reason, "Forbidden");
    assert_eq!(
        refused.message,
        format!(
            "configmaps \"settings\" is forbidden: User \"{service_account_user}\" cannot patch \
             resource \"configmaps\" in API group \"\" in the namespace \"{OTHER_NS}\""
        )
    );
    let details = refused.details.as_ref().expect("details");
    assert_eq!(
        (details.name.as_str(), details.kind.as_str()),
        ("settings", "configmaps")
    );
    assert!(details.causes.is_empty(), "{details:?}");

    let impersonated: Vec<_> = control_plane
        .audit_writes()
        .await?
        .into_iter()
        .filter(|w| w.impersonated_user.is_some())
        .collect();
    assert_eq!(impersonated.len(), 2, "{impersonated:#?}");
    assert!(impersonated.iter().all(|w| w.user == ADMIN_USER));
    assert_eq!(impersonated[0].effective_user(), service_account_user);
    assert_eq!(impersonated[1].code, Some(403));
    assert_eq!(impersonated[1].namespace.as_deref(), Some(OTHER_NS));
    assert_eq!(control_plane.writes_by(&service_account_user).await?.len(), 4);
    Ok(())
}

/// A client for `kubeconfig` that sends `user_agent`, if given.
async fn client_for(kubeconfig: &std::path::Path, user_agent: Option<&str>) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    if let Some(user_agent) = user_agent {
        config.headers.push((
            axum::http::header::USER_AGENT,
            axum::http::HeaderValue::from_str(user_agent)?,
        ));
    }
    Ok(Client::try_from(config)?)
}

/// The API's refusal of a request that had to be refused.
fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> anyhow::Result<Box<Status>> {
    match result {
        Err(kube::Error::Api(status)) => Ok(status),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
}
