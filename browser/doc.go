// Package browser holds the real-browser tests of atomsphere_cors: a
// headless Chromium, driven with chromedp, calls the module from pages on
// loopback. It is its own module so that users' builds never depend on
// chromedp.
package browser
