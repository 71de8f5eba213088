// Command caddy is Caddy with its standard modules and atomsphere_cors,
// built by the tests that run real servers (fleet_test.go) and the explain
// command (explain_test.go).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "atomspherecors"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() { caddycmd.Main() }
