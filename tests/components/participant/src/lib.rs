//! A saga participant for tests, told by each command how to behave: `Do` and `Undo` take
//! `{"key", "name", "behavior"}` and either record the effect `name` (or `undo:name`) under
//! `key` — a ledger that shows every effect happened exactly once — or fail the way the
//! behavior says. `GET /effects/{key}` reads the ledger.
//!
//! Behaviors: "ok" (the default), "noop" (answer, record nothing), "business" (a 400),
//! "system" (a 500), "trap" (a panic), "flaky:N" (a 500 on attempts 1 to N), "spin:N" (N
//! million iterations of busy work first, to be late), "until-fixed" (a 500 until `POST /switch`
//! fixes the participant, as an operator would).

use std::collections::BTreeMap;

use saga_sdk::prelude::*;

#[derive(Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Effect {
    key: String,
    name: String,
    count: u32,
}

impl Aggregate for Effect {
    const NAME: &'static str = "Effect";
    const INDEXES: &'static [&'static str] = &["key"];
}

/// The order in which effects happened, per key.
#[derive(Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Journal {
    key: String,
    entries: Vec<String>,
}

impl Aggregate for Journal {
    const NAME: &'static str = "Journal";
}

#[derive(Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Counter {
    key: String,
    value: u64,
}

impl Aggregate for Counter {
    const NAME: &'static str = "Counter";
}

#[derive(Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Switch {
    fixed: bool,
}

impl Aggregate for Switch {
    const NAME: &'static str = "Switch";
}

#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Order {
    key: String,
    name: String,
    #[serde(default)]
    behavior: String,
    #[serde(default)]
    expected_version: Option<u64>,
}

fn name_uuid(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, parts.join("/").as_bytes())
}

fn switch_uuid() -> Uuid {
    name_uuid(&["switch"])
}

fn attempt(request: &Request) -> u32 {
    request
        .header("attempt")
        .and_then(|a| a.parse().ok())
        .unwrap_or(1)
}

fn behave(order: &Order, attempt: u32) -> Result<()> {
    let behavior = order.behavior.as_str();
    match behavior {
        "" | "ok" | "noop" => Ok(()),
        "business" => Err(Error::business(format!("{} refused", order.name))),
        "system" => Err(Error::system(format!("{} broke", order.name))),
        "trap" => panic!("{} trapped", order.name),
        "until-fixed" => match Switch::get(switch_uuid()) {
            Ok(switch) if switch.fixed => Ok(()),
            _ => Err(Error::system(format!(
                "{} is broken until POST /switch",
                order.name
            ))),
        },
        _ => {
            if let Some(n) = behavior.strip_prefix("flaky:") {
                let failures: u32 = n
                    .parse()
                    .map_err(|_| Error::business("flaky:N needs a number"))?;
                if attempt <= failures {
                    return Err(Error::system(format!(
                        "{} flaked on attempt {attempt}",
                        order.name
                    )));
                }
                Ok(())
            } else if let Some(n) = behavior.strip_prefix("spin:") {
                let millions: u64 = n
                    .parse()
                    .map_err(|_| Error::business("spin:N needs a number"))?;
                let mut x: u64 = 0;
                for i in 0..millions * 1_000_000 {
                    x = std::hint::black_box(x.wrapping_add(i));
                }
                std::hint::black_box(x);
                Ok(())
            } else {
                Err(Error::business(format!("unknown behavior {behavior:?}")))
            }
        }
    }
}

/// Counts one occurrence of `name` under `key`, and journals it.
fn record(key: &str, name: &str) -> Result<u32> {
    let count = match Effect::get(name_uuid(&[key, name])) {
        Ok(mut effect) => {
            effect.count += 1;
            effect.save()?;
            effect.count
        }
        Err(error) if error.is_not_found() => {
            Effect {
                key: key.into(),
                name: name.into(),
                count: 1,
            }
            .create_with_uuid(name_uuid(&[key, name]))?;
            1
        }
        Err(error) => return Err(error),
    };
    match Journal::get(name_uuid(&[key])) {
        Ok(mut journal) => {
            journal.entries.push(name.to_string());
            journal.save()?;
        }
        Err(error) if error.is_not_found() => {
            Journal {
                key: key.into(),
                entries: vec![name.to_string()],
            }
            .create_with_uuid(name_uuid(&[key]))?;
        }
        Err(error) => return Err(error),
    }
    Ok(count)
}

fn perform(request: &Request, effect: impl Fn(&str) -> String) -> Result<Response> {
    let order: Order = request.content()?;
    behave(&order, attempt(request))?;
    let name = effect(&order.name);
    if order.behavior == "noop" {
        return Ok(Response::new(json!({ "done": name })));
    }
    let count = record(&order.key, &name)?;
    Ok(Response::new(json!({ "done": name, "count": count })))
}

fn do_it(request: Request) -> Result<Response> {
    perform(&request, |name| name.to_string())
}

fn undo(request: Request) -> Result<Response> {
    perform(&request, |name| format!("undo:{name}"))
}

/// `Bump {key, expected_version}`: increments a counter that must still be at the version the
/// saga read.
fn bump(request: Request) -> Result<Response> {
    let order: Order = request.content()?;
    let mut counter = Counter::get(name_uuid(&[&order.key, "counter"]))?;
    if let Some(expected) = order.expected_version
        && counter.version != expected
    {
        return Err(Error::conflict(format!(
            "counter {} is at version {}, not {expected}",
            order.key, counter.version
        )));
    }
    counter.value += 1;
    counter.save()?;
    Ok(Response::new(
        json!({ "value": counter.value, "version": counter.version }),
    ))
}

fn create_counter(request: Request) -> Result<Response> {
    let key = request.param("key")?.to_string();
    let counter = Counter {
        key: key.clone(),
        value: 0,
    }
    .create_with_uuid(name_uuid(&[&key, "counter"]))?;
    Ok(Response::new(&counter))
}

fn get_counter(request: Request) -> Result<Response> {
    let key = request.param("key")?;
    Ok(Response::new(Counter::get(name_uuid(&[key, "counter"]))?))
}

fn effects(request: Request) -> Result<Response> {
    let key = request.param("key")?;
    let counts: BTreeMap<String, u32> = Effect::find(Condition::equal("key", key), None)?
        .into_iter()
        .map(|effect| (effect.data.name, effect.data.count))
        .collect();
    let journal = Journal::get(name_uuid(&[key]))
        .map(|j| j.data.entries)
        .unwrap_or_default();
    Ok(Response::new(
        json!({ "counts": counts, "journal": journal }),
    ))
}

/// `POST /alarm {key}`: publishes an `Alarm` event, which this service handles.
fn raise_alarm(request: Request) -> Result<Response> {
    let payload: Value = request.content()?;
    saga_sdk::broker::publish("Alarm", &payload)?;
    Ok(Response::empty())
}

/// The `Alarm` handler fails with a system error until the switch is fixed (a poison message).
fn on_alarm(request: Request) -> Result<Response> {
    let payload: Value = request.content()?;
    let key = payload["key"].as_str().unwrap_or("alarm");
    let fixed = Switch::get(switch_uuid()).map(|s| s.fixed).unwrap_or(false);
    if !fixed {
        return Err(Error::system(
            "the alarm handler is broken until POST /switch",
        ));
    }
    record(key, "alarm")?;
    Ok(Response::empty())
}

fn fix_switch(_request: Request) -> Result<Response> {
    match Switch::get(switch_uuid()) {
        Ok(mut switch) => {
            switch.fixed = true;
            switch.save()?;
        }
        Err(error) if error.is_not_found() => {
            Switch { fixed: true }.create_with_uuid(switch_uuid())?;
        }
        Err(error) => return Err(error),
    }
    Ok(Response::empty())
}

/// A course's seats, counted the tutorial's way: `+1` when one is reserved, `-1` when one is
/// released, and a reservation refused once `taken` reaches the capacity.
#[derive(Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Course {
    course: String,
    taken: i64,
    /// What the course heard: `SeatReserved` events and `NoteSeat` commands sent while seats
    /// were reserved — only for sagas that finished, since a failed saga's messages vanish.
    events: i64,
    notes: i64,
}

impl Aggregate for Course {
    const NAME: &'static str = "Course";
}

const CAPACITY: i64 = 2;

#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Seat {
    course: String,
    #[serde(default)]
    behavior: String,
}

fn course_uuid(course: &str) -> Uuid {
    name_uuid(&["course", course])
}

/// The course, created empty the first time (a name-based uuid: concurrent first reservations
/// collide, and the loser is run again).
fn course(name: &str) -> Result<Stored<Course>> {
    match Course::get(course_uuid(name)) {
        Err(error) if error.is_not_found() => Course {
            course: name.into(),
            taken: 0,
            events: 0,
            notes: 0,
        }
        .create_with_uuid(course_uuid(name)),
        found => found,
    }
}

/// `ReserveSeat {course}`: `+1`, refused when the course is full; announces it (an event and a
/// command to itself), which only a finished saga's reservation gets to do.
fn reserve_seat(request: Request) -> Result<Response> {
    let seat: Seat = request.content()?;
    let order = Order {
        key: seat.course.clone(),
        name: "reserve".into(),
        behavior: seat.behavior,
        expected_version: None,
    };
    behave(&order, attempt(&request))?;
    let mut course = course(&seat.course)?;
    if course.taken >= CAPACITY {
        return Err(Error::business(format!("course {} is full", seat.course)));
    }
    course.taken += 1;
    course.save()?;
    saga_sdk::broker::publish("SeatReserved", &json!({"course": seat.course}))?;
    saga_sdk::broker::send("NoteSeat", &json!({"course": seat.course}), None)?;
    Ok(Response::new(json!({"taken": course.taken})))
}

/// `ReleaseSeat {course}`: `-1`, the obvious compensation of a reservation.
fn release_seat(request: Request) -> Result<Response> {
    let seat: Seat = request.content()?;
    let order = Order {
        key: seat.course.clone(),
        name: "release".into(),
        behavior: seat.behavior,
        expected_version: None,
    };
    behave(&order, attempt(&request))?;
    let mut course = course(&seat.course)?;
    course.taken -= 1;
    course.save()?;
    Ok(Response::new(json!({"taken": course.taken})))
}

/// `SeatReserved`: a reservation of a finished saga was announced.
fn heard_event(request: Request) -> Result<Response> {
    let seat: Seat = request.content()?;
    let mut course = course(&seat.course)?;
    course.events += 1;
    course.save()?;
    Ok(Response::empty())
}

/// `NoteSeat`: a finished saga's reservation sent a note.
fn heard_note(request: Request) -> Result<Response> {
    let seat: Seat = request.content()?;
    let mut course = course(&seat.course)?;
    course.notes += 1;
    course.save()?;
    Ok(Response::empty())
}

fn get_course(request: Request) -> Result<Response> {
    let name = request.param("course")?;
    Ok(Response::new(match Course::get(course_uuid(name)) {
        Ok(course) => {
            json!({"taken": course.taken, "events": course.events, "notes": course.notes})
        }
        Err(error) if error.is_not_found() => json!({"taken": 0, "events": 0, "notes": 0}),
        Err(error) => return Err(error),
    }))
}

fn service() -> Service {
    Service::new("participant")
        .aggregate::<Effect>()
        .aggregate::<Journal>()
        .aggregate::<Counter>()
        .aggregate::<Switch>()
        .aggregate::<Course>()
        .broker_command("ReserveSeat", reserve_seat)
        .broker_command("ReleaseSeat", release_seat)
        .broker_event("SeatReserved", heard_event)
        .broker_command("NoteSeat", heard_note)
        .rest_query(Method::Get, "/courses/{course}", get_course)
        .broker_command("Do", do_it)
        .broker_command("Undo", undo)
        .broker_command("Bump", bump)
        .broker_event("Alarm", on_alarm)
        .rest_query(Method::Get, "/effects/{key}", effects)
        .rest_command(Method::Post, "/counters/{key}", create_counter)
        .rest_query(Method::Get, "/counters/{key}", get_counter)
        .rest_command(Method::Post, "/alarm", raise_alarm)
        .rest_command(Method::Post, "/switch", fix_switch)
}

saga_sdk::export_participant!(service);
