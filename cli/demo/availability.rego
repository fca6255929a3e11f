# Every contract promises at least 99 % availability. Written in the older
# Rego syntax (rule[msg] { ... }), which meshq evaluates as well.
package meshq.governance.availability

deny[msg] {
	contract := input.contracts[_]
	sla := contract.slaProperties[_]
	sla.property == "availability"
	to_number(sla.value) < 99
	msg := sprintf("contract %s promises %v %% availability; the mesh requires at least 99 %%", [contract.id, sla.value])
}

warn[msg] {
	contract := input.contracts[_]
	not has_availability(contract)
	msg := sprintf("contract %s declares no availability SLA", [contract.id])
}

has_availability(contract) {
	contract.slaProperties[_].property == "availability"
}
