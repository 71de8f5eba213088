// Package bench compares atomsphere_cors with github.com/rs/cors, the
// peer of issue 4. It is its own module so that users' builds never
// depend on rs/cors.
package bench
