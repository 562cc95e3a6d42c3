//! A trip-booking saga with a deliberately wrong compensation, for `saga-host check`: the
//! flight's compensation reads the hotel's reservation (a copy-paste slip), which only exists
//! once the hotel step succeeded. Whenever the hotel step fails after the flight was booked,
//! the flight cannot be cancelled and the saga ends `compensation-failed`; every other path is
//! fine, so only a checker that walks the failure paths finds it.

use saga_sdk::prelude::*;

fn trip(context: &SagaContext) -> Result<Value> {
    Ok(json!({"trip": context.get::<String>("trip")?}))
}

fn store_flight(mut context: SagaContext, reply: Reply) -> Result<SagaContext> {
    context.set("flight", reply.content::<Value>()?);
    Ok(context)
}

fn store_hotel(mut context: SagaContext, reply: Reply) -> Result<SagaContext> {
    context.set("hotel", reply.content::<Value>()?);
    Ok(context)
}

/// The slip: cancelling the flight names the hotel's reservation.
fn cancel_flight(context: &SagaContext) -> Result<Value> {
    Ok(json!({"reservation": context.get::<Value>("hotel")?}))
}

fn cancel_hotel(context: &SagaContext) -> Result<Value> {
    Ok(json!({"reservation": context.get::<Value>("hotel")?}))
}

fn book(request: Request) -> Result<Response> {
    let trip: String = request.content()?;
    let saga = SagaManager::run("BOOK_TRIP", SagaContext::new().with("trip", trip))?;
    Ok(Response::new(
        json!({"status": format!("{:?}", saga.status)}),
    ))
}

fn service() -> Service<Orchestrator> {
    Service::new("trips")
        .rest_command(Method::Post, "/trips", book)
        .saga(
            "BOOK_TRIP",
            Saga::new()
                .step()
                .invoke_participant("ReserveFlight", trip)
                .on_reply(store_flight)
                .with_compensation("CancelFlight", cancel_flight)
                .step()
                .invoke_participant("ReserveHotel", trip)
                .on_reply(store_hotel)
                .with_compensation("CancelHotel", cancel_hotel)
                .commit_empty(),
        )
}

saga_sdk::export_orchestrator!(service);
