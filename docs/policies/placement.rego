# Submitter placement: which workers may see a task's inputs.
package crank.placement

import rego.v1

confidential if input.task.labels.sensitivity == "confidential"

# Confidential content stays on allow-listed devices (data.json) or the submitter's own.
exclude contains "confidential task: worker not allow-listed" if {
	confidential
	not input.candidate.own
	not input.candidate.id in data.submitter.confidential_devices
}

# Never let a bid above the label's budget win, whatever the auction's max price.
exclude contains msg if {
	budget := to_number(input.task.labels.budget_stroops)
	input.candidate.bid.price_stroops > budget
	msg := sprintf("bid of %d stroops over the task's budget of %d", [input.candidate.bid.price_stroops, budget])
}
