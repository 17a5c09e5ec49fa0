# Submitter output handling: what a result hands back to the caller.
package crank.output

import rego.v1

# A confidential task's raw scores stay on this node: the caller gets the other outputs.
redact contains name if {
	input.task.labels.sensitivity == "confidential"
	some output in input.outputs
	name := output.name
	name in data.submitter.confidential_outputs
}
