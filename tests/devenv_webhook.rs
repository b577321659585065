//! The admission webhook of the development environment against the real API
//! server: what a client gets back when the webhook denies, fails with HTTP 500
//! or is unreachable, and that dry-run requests reach it too.

mod support;

use std::time::Duration;

use bosun_devenv::{
    AdmissionWebhook, ControlPlane, ControlPlaneOptions, WebhookBehavior, webhook_name, webhook_rule,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::Status;
use serde_json::json;
use support::{eventually, init_tracing};

const WAIT: Duration = Duration::from_secs(30);
const GUARDED: &str = "guarded";
const CONFIGURATION: &str = "guard";

fn config_map(name: &str, value: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name },
        "data": { "value": value },
    })
}

/// Server-side applies a ConfigMap as `bosun-test`; the API's refusal as `Err(status)`.
async fn apply_config_map(
    api: &Api<ConfigMap>,
    name: &str,
    value: &str,
    dry_run: bool,
) -> anyhow::Result<Result<ConfigMap, Box<Status>>> {
    let mut params = PatchParams::apply("bosun-test").force();
    params.dry_run = dry_run;
    match api
        .patch(name, &params, &Patch::Apply(config_map(name, value)))
        .await
    {
        Ok(object) => Ok(Ok(object)),
        Err(kube::Error::Api(status)) => Ok(Err(status)),
        Err(other) => Err(other.into()),
    }
}

fn describe(status: &Status) -> String {
    format!(
        "code={} reason={:?} message={:?} details={:?}",
        status.code, status.reason, status.message, status.details
    )
}

/// The message of the status's single cause.
fn only_cause(status: &Status) -> Option<&str> {
    let details = status.details.as_ref()?;
    assert_eq!(details.causes.len(), 1, "{}", describe(status));
    assert!(
        details.name.is_empty() && details.kind.is_empty(),
        "{}",
        describe(status)
    );
    Some(details.causes[0].message.as_str())
}

#[tokio::test]
async fn webhook_denies_fails_and_is_unreachable_as_the_api_server_reports() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    let mut webhook = AdmissionWebhook::start().await?;
    let rules = vec![webhook_rule(&["CREATE", "UPDATE"], "", "v1", "configmaps")];
    webhook.register(&client, CONFIGURATION, rules, GUARDED).await?;
    let guarded: Api<ConfigMap> = Api::namespaced(client.clone(), GUARDED);
    let name = webhook_name(CONFIGURATION);

    // Deny: the webhook's code and reason, the API server's prefix on its message.
    webhook.set_behavior(WebhookBehavior::Deny("configmaps are frozen".into()));
    // The API server loads the configuration from a watch: wait until it applies.
    // An attempt made before then creates the ConfigMap: delete it, so that the one
    // denied is a CREATE again.
    let denied = eventually("the webhook to deny", WAIT, || async {
        match apply_config_map(&guarded, "settings", "1", false).await? {
            Err(status) => Ok(Some(status)),
            Ok(_) => {
                guarded
                    .delete("settings", &kube::api::DeleteParams::default())
                    .await?;
                Ok(None)
            }
        }
    })
    .await?;
    eprintln!("webhook Deny: {}", describe(&denied));
    assert_eq!(denied.code, 403);
    assert_eq!(denied.reason, "Forbidden");
    assert_eq!(
        denied.message,
        format!("admission webhook \"{name}\" denied the request: configmaps are frozen")
    );
    assert!(denied.details.is_none(), "{}", describe(&denied));
    let reviews = webhook.reviews();
    let review = reviews.last().expect("the webhook saw the request");
    assert_eq!(review.operation, "CREATE");
    assert_eq!(review.resource, "configmaps");
    assert_eq!(review.namespace.as_deref(), Some(GUARDED));
    assert_eq!(review.name.as_deref(), Some("settings"));
    assert_eq!(review.user, "admin");
    assert!(!review.dry_run);

    // A dry run reaches the webhook too (sideEffects: None) and is refused alike.
    let denied_dry_run = apply_config_map(&guarded, "settings", "1", true)
        .await?
        .unwrap_err();
    assert_eq!(denied_dry_run.code, 403);
    assert!(webhook.reviews().last().unwrap().dry_run);

    // Other namespaces are not selected.
    let open: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let reviews_before = webhook.reviews().len();
    apply_config_map(&open, "settings", "1", false)
        .await?
        .expect("not guarded");
    assert_eq!(webhook.reviews().len(), reviews_before);

    // Fail500: the webhook call fails, and failurePolicy Fail refuses the request.
    webhook.set_behavior(WebhookBehavior::Fail500);
    let failed = apply_config_map(&guarded, "settings", "1", false)
        .await?
        .unwrap_err();
    eprintln!("webhook Fail500: {}", describe(&failed));
    assert_eq!(failed.code, 500);
    assert_eq!(failed.reason, "InternalError");
    let prefix = format!("Internal error occurred: failed calling webhook \"{name}\": ");
    let cause =
        "an error on the server (\"simulated webhook failure\") has prevented the request from succeeding";
    assert_eq!(failed.message, format!("{prefix}{cause}"));
    assert_eq!(
        only_cause(&failed),
        failed.message.strip_prefix("Internal error occurred: ")
    );
    assert_eq!(webhook.reviews().last().unwrap().answer, WebhookBehavior::Fail500);

    // Allow: the request passes, dry run or not, and the webhook saw both.
    webhook.set_behavior(WebhookBehavior::Allow);
    let dry_runs_before = webhook.reviews().iter().filter(|r| r.dry_run).count();
    apply_config_map(&guarded, "settings", "2", true)
        .await?
        .expect("allowed dry run");
    assert!(
        guarded.get_opt("settings").await?.is_none(),
        "a dry run creates nothing"
    );
    let created = apply_config_map(&guarded, "settings", "2", false)
        .await?
        .expect("allowed");
    assert_eq!(created.data.unwrap()["value"], "2");
    let updated = apply_config_map(&guarded, "settings", "3", false)
        .await?
        .expect("allowed");
    assert_eq!(updated.data.unwrap()["value"], "3");
    let reviews = webhook.reviews();
    let dry_runs: Vec<_> = reviews.iter().filter(|r| r.dry_run).collect();
    assert_eq!(dry_runs.len(), dry_runs_before + 1, "{reviews:#?}");
    let last_two: Vec<&str> = reviews[reviews.len() - 2..]
        .iter()
        .map(|r| r.operation.as_str())
        .collect();
    assert_eq!(last_two, ["CREATE", "UPDATE"]);

    // Unreachable: the call cannot connect, which failurePolicy Fail refuses too.
    webhook.stop().await;
    let unreachable = apply_config_map(&guarded, "settings", "4", false)
        .await?
        .unwrap_err();
    eprintln!("webhook stopped: {}", describe(&unreachable));
    assert_eq!(unreachable.code, 500);
    assert_eq!(unreachable.reason, "InternalError");
    let port = webhook.port();
    let cause = format!(
        "Post \"https://127.0.0.1:{port}/validate?timeout=5s\": dial tcp 127.0.0.1:{port}: connect: connection refused"
    );
    assert_eq!(unreachable.message, format!("{prefix}{cause}"));
    assert_eq!(
        only_cause(&unreachable),
        unreachable.message.strip_prefix("Internal error occurred: ")
    );

    // Back again: requests pass.
    webhook.restart().await?;
    apply_config_map(&guarded, "settings", "5", false)
        .await?
        .expect("allowed after restart");

    AdmissionWebhook::unregister(&client, CONFIGURATION).await?;
    Ok(())
}
