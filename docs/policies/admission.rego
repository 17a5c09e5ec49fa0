# Owner admission: which calls for bids this device answers, and at what price.
# Copy into <data dir>/policies/ to use; the node reloads it when the file changes.
package crank.admission

import rego.v1

# No work for requesters this device has never been paid by, unless they offer at least
# `min_stranger_price_stroops` (data.json) for the task.
deny contains msg if {
	not input.requester.trust.known
	input.price.max_stroops < data.owner.min_stranger_price_stroops
	msg := sprintf("unknown requester offering %d stroops, below %d", [input.price.max_stroops, data.owner.min_stranger_price_stroops])
}

# No work above a temperature: the device is hot enough already.
deny contains msg if {
	input.device.temperature_c > data.owner.max_temperature_c
	msg := sprintf("device at %.0f °C, above %d °C", [input.device.temperature_c, data.owner.max_temperature_c])
}

# Work on battery costs the owner battery wear: charge twice the price.
price_multiplier := 2 if input.gate.on_battery
