// Package policy is the CORS policy engine (docs/behaviour.md): rules and
// their checks, the compiled index, the path guard and Decide, a pure
// function from a request to a Decision. It imports nothing of Caddy:
// what it needs of the server (path cleaning, the original request) comes
// in its Config, and a rules store plugs in as a Source.
package policy
