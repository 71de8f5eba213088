// Command caddy is Caddy with its standard modules and atomsphere_cors,
// built by fleet_test.go to run several real servers.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "atomspherecors"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() { caddycmd.Main() }
