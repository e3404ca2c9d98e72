//! `#[shmrpc::message]` in a crate with no `rkyv` dependency of its own (this crate has none:
//! see its Cargo.toml). Fails to compile if the attribute's expansion names `rkyv` rather than
//! `shmrpc::rkyv`, which is what a user's crate would hit.

use shmrpc::{Client, Request, Server};

#[shmrpc::message(derive(Debug))]
#[derive(Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
    label: String,
}

#[shmrpc::message(derive(Debug))]
enum Shape {
    Dot(Point),
    Line { from: Point, to: Point },
}

#[test]
fn a_message_type_round_trips_without_an_rkyv_dependency() {
    let name = format!("test-derive-{}", std::process::id());
    let server = Server::builder(&name)
        .serve(|req: Request<'_, Shape>| match &*req {
            ArchivedShape::Dot(p) => Point {
                x: p.x.to_native(),
                y: p.y.to_native(),
                label: format!("dot {}", p.label),
            },
            ArchivedShape::Line { from, to } => Point {
                x: to.x.to_native() - from.x.to_native(),
                y: to.y.to_native() - from.y.to_native(),
                label: format!("{} to {}", from.label, to.label),
            },
        })
        .unwrap();
    let client = Client::builder(name.as_str())
        .connect::<Shape, Point>()
        .unwrap();
    let p = |x, y, l: &str| Point {
        x,
        y,
        label: l.into(),
    };
    let reply = client
        .request(&Shape::Line {
            from: p(1, 2, "a"),
            to: p(4, 6, "b"),
        })
        .unwrap();
    assert_eq!(reply.deserialize().unwrap(), p(3, 4, "a to b"));
    drop(reply);
    let reply = client.request(&Shape::Dot(p(7, 8, "c"))).unwrap();
    assert_eq!(reply.label, "dot c");
    drop(reply);
    drop(server);
}
