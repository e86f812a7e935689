// Package browser holds only tests: wsrc-server's status page
// (internal/status) in a real browser, Debian's headless Chromium.
//
//	test ──► httptest server on 127.0.0.1 ── status handler ── fake Source
//	  │                     ▲
//	  └─ chromium --headless --dump-dom / --screenshot ─┘
//
// Each test starts the handler on a loopback port with a fake Source,
// runs Chromium once per page load with --virtual-time-budget (the page's
// timers run on virtual time, so "after 5 s of polling" costs no wall
// time and does not depend on the machine's speed; Chromium pauses
// virtual time while a fetch is in flight), and reads the DOM Chromium
// dumps after that. The checks: the cards, agents and users render; the
// page's polling picks up a change of the Source (the fake answers the
// first request with one snapshot and later ones with another); and names
// from the network that carry markup are shown as text, never run or
// loaded (requests the markup would make are counted by the test
// server).
//
// Requirements: Debian's chromium package (/usr/bin/chromium; another
// binary can be named in WSRC_CHROMIUM). Without it the tests skip,
// except under CI=true, where they fail. -short skips them too. Set
// WSRC_SCREENSHOT=/path/page.png to keep the screenshot that
// TestScreenshot takes. Chromium runs as its own process group, which the
// test kills when a run ends or overstays its timeout.
package browser
