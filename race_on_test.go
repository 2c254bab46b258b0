//go:build race

package websocket_test

// raceEnabled: the test binary runs under the race detector.
const raceEnabled = true
