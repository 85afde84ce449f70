// The field is reported, once: the event handler's check that its first
// parameter is a message defers `Message: Send`, so it adds no error.

use std::rc::Rc;

use catga::prelude::*;

#[event]
pub struct Renamed {
    pub name: Rc<str>,
}

#[handler]
fn on_renamed(e: Renamed) {
    let _ = e.name.len();
}

fn main() {}
