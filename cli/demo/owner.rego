# Every product names the team that owns it, and someone on it as owner.
package meshq.governance.owner

deny contains msg if {
	not input.product.team.name
	msg := sprintf("product %s has no owner team (ODPS team.name)", [input.product.id])
}

deny contains msg if {
	input.product.team.name
	owners := [m | some m in input.product.team.members; m.role == "owner"]
	count(owners) == 0
	msg := sprintf("product %s: team %s names no member with role owner", [input.product.id, input.product.team.name])
}
