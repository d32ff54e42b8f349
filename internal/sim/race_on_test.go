//go:build race

package sim

// raceEnabled is set under the race detector, which slows the simulator
// about twentyfold: its validation runs are single-threaded arithmetic
// with nothing for the detector to find, so they run without it (see
// .ci/run and README.md).
const raceEnabled = true
