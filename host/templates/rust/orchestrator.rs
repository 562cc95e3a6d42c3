//! The {{name}} service, a saga orchestrator (WIT world `orchestrator`), as `saga-host new`
//! wrote it: one aggregate, two routes, a broker command and the saga they run.
//!
//! - `POST /{{name}} {"item": "<uuid of a {{Participant}}>", "quantity": 2}` runs the saga
//!   CREATE_{{NAME}}: its step asks the {{participant}} service to reserve the quantity
//!   (`Reserve{{Participant}}`, compensated by `Release{{Participant}}`) and its commit stores
//!   the {{Name}}: 201 with it, or the participant's refusal (400 when not enough is left).
//! - The broker command `Create{{Name}}` does the same for another service (200 with it).
//! - `GET /{{name}}/{uuid}` reads one back: 404 when there is none.
//!
//! `saga-host new rust {{participant}}` writes that participant. `./build.sh` builds
//! {{name}}.wasm; `./build.sh test` also runs tests/smoke.json (the participant stubbed).

use saga_sdk::prelude::*;

const CREATE_{{NAME}}: &str = "CREATE_{{NAME}}";

/// The aggregate: every write is an event, and the host publishes `{{Name}}Created`,
/// `{{Name}}Updated` and `{{Name}}Deleted` to the services subscribed to them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct {{Name}} {
    item: Uuid,
    quantity: u32,
}

impl Aggregate for {{Name}} {
    const NAME: &'static str = "{{Name}}";
    const INDEXES: &'static [&'static str] = &["item"];
}

/// The body of `POST /{{name}}` and the payload of `Create{{Name}}`.
#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct New{{Name}} {
    item: Uuid,
    quantity: u32,
}

/// The payload of `Reserve{{Participant}}` and of its compensation `Release{{Participant}}`.
fn reservation(context: &SagaContext) -> Result<Value> {
    Ok(json!({
        "uuid": context.get::<Uuid>("item")?,
        "quantity": context.get::<u32>("quantity")?,
    }))
}

fn store_reservation(mut context: SagaContext, reply: Reply) -> Result<SagaContext> {
    context.set("reservation", reply.content::<Value>()?);
    Ok(context)
}

/// The participant refused (an ERROR reply): fail the step with its reason. Without `on_error`
/// the saga would go on and commit.
fn refuse(_context: SagaContext, reply: Reply) -> Result<SagaContext> {
    Err(Error::with_status(reply.status, reply.message()))
}

/// The saga's commit: its writes (the {{Name}} here, the reservation in the participant) become
/// visible together.
fn commit(mut context: SagaContext) -> Result<SagaContext> {
    let created = {{Name}} {
        item: context.get("item")?,
        quantity: context.get("quantity")?,
    }
    .create()?;
    context.set("created", &created);
    Ok(context)
}

fn create_saga() -> Saga {
    Saga::new()
        .step()
        .invoke_participant("Reserve{{Participant}}", reservation)
        .on_reply(store_reservation)
        .on_error(refuse)
        .with_compensation("Release{{Participant}}", reservation)
        .commit(commit)
}

/// Runs CREATE_{{NAME}} and answers with the new {{Name}}, or with why the saga failed.
fn run_create(request: &Request) -> Result<Value> {
    let New{{Name}} { item, quantity } = request.content()?;
    if quantity == 0 {
        return Err(Error::business("quantity must be 1 or more"));
    }
    let context = SagaContext::new()
        .with("item", item)
        .with("quantity", quantity);
    let saga = SagaManager::run(CREATE_{{NAME}}, context)?;
    if saga.status == SagaStatus::Finished {
        return Ok(saga.context["created"].clone());
    }
    let cause = saga
        .error
        .unwrap_or_else(|| Error::system("the saga did not finish"));
    Err(Error::with_status(cause.status, cause.message))
}

fn create(request: Request) -> Result<Response> {
    Ok(Response::new(run_create(&request)?).with_status(201))
}

fn create_command(request: Request) -> Result<Response> {
    Ok(Response::new(run_create(&request)?))
}

fn get(request: Request) -> Result<Response> {
    let uuid: Uuid = request.param_as("uuid")?;
    Ok(Response::new({{Name}}::get(uuid)?))
}

fn service() -> Service<Orchestrator> {
    Service::new("{{name}}")
        .aggregate::<{{Name}}>()
        .rest_command(Method::Post, "/{{name}}", create)
        .rest_query(Method::Get, "/{{name}}/{uuid}", get)
        .broker_command("Create{{Name}}", create_command)
        .saga(CREATE_{{NAME}}, create_saga())
}

saga_sdk::export_orchestrator!(service);
