// Command cmd is Caddy with its standard modules, atomsphere_cors and the
// test-only Redis storage (caddy.storage.atomsphere_test_redis), built by
// TestStoreFleetRedis to run real servers sharing a store in Redis.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "atomspherecors"
	_ "atomspherecors/redisstore/redisstorage"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() { caddycmd.Main() }
