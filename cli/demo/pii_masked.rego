# Every column classified pii is masked for most readers: by a mask of its
# own in the contract, or by a global policy of the mesh.
package meshq.governance.pii

deny contains msg if {
	some table in input.tables
	some column in table.columns
	column.classification == "pii"
	count(column.masked_by) == 0
	msg := sprintf("%s.%s is classified pii but no mask applies to it", [table.name, column.name])
}
