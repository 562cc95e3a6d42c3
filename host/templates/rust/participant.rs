//! The {{name}} service, a saga participant (WIT world `participant`), as `saga-host new` wrote
//! it: one aggregate, two routes and the commands a saga's step sends it.
//!
//! - `POST /{{name}} {"name": "widget", "quantity": 5}` stores a {{Name}}: 201 with it.
//! - `GET /{{name}}/{uuid}` reads one back: 404 when there is none.
//! - The broker command `Reserve{{Name}} {"uuid", "quantity"}` takes that quantity from the
//!   {{Name}} — a saga's step (`saga-host new … --orchestrator --participant {{name}}` writes an
//!   orchestrator that sends it) — and refuses (400) when not enough is left;
//!   `Release{{Name}}` gives it back: the step's compensation.
//!
//! `./build.sh` builds {{name}}.wasm; `./build.sh test` also runs tests/smoke.json.

use saga_sdk::prelude::*;

/// The aggregate: every write is an event, and the host publishes `{{Name}}Created`,
/// `{{Name}}Updated` and `{{Name}}Deleted` to the services subscribed to them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct {{Name}} {
    name: String,
    quantity: u32,
}

impl Aggregate for {{Name}} {
    const NAME: &'static str = "{{Name}}";
}

/// The body of `POST /{{name}}`.
#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct New{{Name}} {
    name: String,
    quantity: u32,
}

/// The payload of `Reserve{{Name}}` and `Release{{Name}}`.
#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Amount {
    uuid: Uuid,
    quantity: u32,
}

impl Amount {
    /// The payload, with a quantity of at least 1 (a missing or mistyped field is a 400 that
    /// names it).
    fn of(request: &Request) -> Result<Amount> {
        let amount: Amount = request.content()?;
        if amount.quantity == 0 {
            return Err(Error::business("quantity must be 1 or more"));
        }
        Ok(amount)
    }
}

fn create(request: Request) -> Result<Response> {
    let New{{Name}} { name, quantity } = request.content()?;
    if name.trim().is_empty() {
        return Err(Error::business("name must not be empty"));
    }
    let created = {{Name}} { name, quantity }.create()?;
    Ok(Response::new(created).with_status(201))
}

fn get(request: Request) -> Result<Response> {
    let uuid: Uuid = request.param_as("uuid")?;
    Ok(Response::new({{Name}}::get(uuid)?))
}

/// `Reserve{{Name}}`: in a saga, this write is staged under the saga — it becomes visible when
/// the saga commits and vanishes if the saga fails.
fn reserve(request: Request) -> Result<Response> {
    let Amount { uuid, quantity } = Amount::of(&request)?;
    let mut stored = {{Name}}::get(uuid)?;
    if stored.quantity < quantity {
        return Err(Error::business(format!(
            "only {} of {} left, not {quantity}",
            stored.quantity, stored.name
        )));
    }
    stored.quantity -= quantity;
    stored.save()?;
    let answer = json!({"uuid": uuid, "reserved": quantity, "left": stored.quantity});
    Ok(Response::new(answer))
}

/// `Release{{Name}}`, the compensation of `Reserve{{Name}}`: the obvious undo. A compensation
/// runs inside its failed saga, so this write vanishes with the reservation it undoes.
fn release(request: Request) -> Result<Response> {
    let Amount { uuid, quantity } = Amount::of(&request)?;
    let mut stored = {{Name}}::get(uuid)?;
    stored.quantity += quantity;
    stored.save()?;
    let answer = json!({"uuid": uuid, "released": quantity, "left": stored.quantity});
    Ok(Response::new(answer))
}

fn service() -> Service {
    Service::new("{{name}}")
        .aggregate::<{{Name}}>()
        .rest_command(Method::Post, "/{{name}}", create)
        .rest_query(Method::Get, "/{{name}}/{uuid}", get)
        .broker_command("Reserve{{Name}}", reserve)
        .broker_command("Release{{Name}}", release)
}

saga_sdk::export_participant!(service);
