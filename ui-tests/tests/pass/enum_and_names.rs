//! An enum command, explicit wire and snapshot names, a linearizable query,
//! unit and tuple structs.

use catga::prelude::*;

#[state(name = "ui.light")]
#[derive(Default)]
pub struct Light {
    on: bool,
    level: u8,
}

#[command(name = "ui.Switch")]
pub enum Switch {
    On,
    Off,
    Dim { level: u8 },
}

#[query(name = "ui.IsOn", linearizable)]
pub struct IsOn;

#[query(linearizable, name = "ui.Level")]
pub struct Level(pub u8);

#[event(name = "ui.Switched")]
pub struct Switched(pub bool);

#[handler]
fn switch(cmd: Switch, light: &mut Light, ctx: &mut CommandContext) {
    match cmd {
        Switch::On => light.on = true,
        Switch::Off => light.on = false,
        Switch::Dim { level } => light.level = level,
    }
    ctx.publish(Switched(light.on));
}

#[handler]
fn is_on(_q: IsOn, light: &Light) -> bool {
    light.on
}

#[handler]
fn level(q: Level, light: &Light) -> bool {
    light.level >= q.0
}

fn main() {
    assert_eq!(<Switch as Message>::NAME, "ui.Switch");
    assert_eq!(<IsOn as Message>::NAME, "ui.IsOn");
    assert_eq!(<IsOn as Query>::CONSISTENCY, Consistency::Linearizable);
    assert_eq!(<Level as Query>::CONSISTENCY, Consistency::Linearizable);
    assert_eq!(<Switched as Message>::KIND, catga::MessageKind::Event);
    // The route the handler registered carries the query's consistency.
    match <IsOn as Handled>::ROUTE {
        catga::__private::Route::Query { consistency, .. } => {
            assert_eq!(consistency, Consistency::Linearizable)
        }
        _ => panic!("IsOn reads state"),
    }
    let names = catga::testing::state_names().unwrap();
    assert!(names.iter().any(|(name, _)| name == "ui.light"));
}
