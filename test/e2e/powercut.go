package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// The power-cut trials. A first, uncut trial (image cut-00) times the two
// operations line by line: `updatectl upgrade` from its start to its end,
// and the finalize at shutdown from the start of twinroot-finalize's
// ExecStop to its end. Each log line updatectl prints (at info level) starts
// a segment: "pull/pulling", "deploy/deploying", "stage/staging",
// "finalize/committing"..., and "start" is the stretch from the start to the
// first line. Every later trial upgrades to a new image (cut-i, v2 plus a
// one-file layer, version 2.i) and cuts the power in one segment, taken in
// turn, at a seeded moment within its measured length; odd trials cut the
// upgrade, even ones its finalize. The next boot checks what the cut left: a
// complete deployment booted, the one before or the new one, and a clean
// fsck.

// finalizeMarks makes this boot's finalize visible to the host: a runtime
// drop-in (gone at the next boot; the product's unit is not changed) writes
// marks around twinroot-finalize's ExecStop and sends its info-level log to
// the driver's serial port. ExecStopPost marks the end even if it fails.
const finalizeMarks = `
d=/run/systemd/system/twinroot-finalize.service.d
mkdir -p "$d"
cat >"$d/e2e.conf" <<EOF
[Service]
StandardOutput=file:/dev/ttyS1
StandardError=file:/dev/ttyS1
ExecStop=
ExecStop=/bin/sh -c 'echo E2E-MARK finalize-start'
ExecStop=$U --log-level info finalize --if-staged
ExecStopPost=/bin/sh -c 'echo E2E-MARK finalize-done'
EOF
systemctl daemon-reload
`

const cutCheckScript = `
capture status "$U" status --json
capture fsck "$U" fsck
`

// cutUpgradeScript: the power goes while the upgrade runs.
const cutUpgradeScript = `
e2e_mark upgrade-start
capture upgrade "$U" --log-level info upgrade
e2e_mark upgrade-done
touch /run/twinroot-e2e-keep-running
sleep 600
`

// cutFinalizeScript: the upgrade completes; the power goes during the
// finalize at shutdown. The calibration trial runs it uncut.
const cutFinalizeScript = `
e2e_mark upgrade-start
capture upgrade "$U" --log-level info upgrade || exit 1
e2e_mark upgrade-done
` + finalizeMarks + `
touch /run/twinroot-e2e-keep-running
systemctl reboot
sleep 600
`

// timeline is when the lines of one operation reached the host during a
// boot: its start mark, each log line, its end mark.
type timeline struct {
	start, end string                   // mark names
	t0, t1     time.Duration            // when they came; 0: not yet
	first      map[string]time.Duration // segment name → when its first line came
	order      []string                 // segment names in the order they came
}

func newTimeline(op string) *timeline {
	return &timeline{start: op + "-start", end: op + "-done", first: map[string]time.Duration{}}
}

// see takes one line of the driver's output and when it came.
func (tl *timeline) see(line string, since time.Duration) {
	line = strings.TrimSpace(line)
	switch {
	case line == "":
	case tl.t0 == 0:
		if line == "E2E-MARK "+tl.start {
			tl.t0 = since
			tl.add("start", since)
		}
	case tl.t1 != 0:
	case line == "E2E-MARK "+tl.end:
		tl.t1 = since
	default:
		if n := phaseOf(line); n != "" {
			tl.add(n, since)
		}
	}
}

func (tl *timeline) add(name string, at time.Duration) {
	if _, ok := tl.first[name]; !ok {
		tl.first[name] = at
		tl.order = append(tl.order, name)
	}
}

// at names the segment running at t: "before", a segment, or "after".
func (tl *timeline) at(t time.Duration) string {
	if tl.t0 == 0 || t < tl.t0 {
		return "before"
	}
	if tl.t1 != 0 && t >= tl.t1 {
		return "after"
	}
	cur := "start"
	for _, n := range tl.order {
		if tl.first[n] <= t {
			cur = n
		}
	}
	return cur
}

// segment is one stretch of a calibrated operation.
type segment struct {
	name string
	dur  time.Duration
}

// segments returns the stretches of a finished operation, in order.
func (tl *timeline) segments() []segment {
	if tl.t1 == 0 {
		return nil
	}
	return tl.completed()
}

// completed returns the segments whose end came: each one followed by
// another, and the last one once the end mark came. A cut trial gives the
// segments before the cut.
func (tl *timeline) completed() []segment {
	var s []segment
	for i, n := range tl.order {
		end := tl.t1
		if i+1 < len(tl.order) {
			end = tl.first[tl.order[i+1]]
		}
		if end != 0 {
			s = append(s, segment{n, end - tl.first[n]})
		}
	}
	return s
}

// aims are the segments of one operation that trials cut in turn: those
// the uncut trial timed, and those first seen in later trials (the prune
// after an upgrade has nothing to remove in the first one), each inserted
// after the segment it followed.
type aims struct {
	segs []segment
	next int // seeded start, then one further per trial
}

func (a *aims) learn(got []segment) {
	for i, g := range got {
		if slices.ContainsFunc(a.segs, func(s segment) bool { return s.name == g.name }) {
			continue
		}
		at := len(a.segs)
		if i > 0 {
			if j := slices.IndexFunc(a.segs, func(s segment) bool { return s.name == got[i-1].name }); j >= 0 {
				at = j + 1
			}
		}
		a.segs = slices.Insert(a.segs, at, g)
	}
}

func (a *aims) take() segment {
	s := a.segs[a.next%len(a.segs)]
	a.next++
	return s
}

func (tl *timeline) String() string {
	var b []string
	for _, s := range tl.segments() {
		b = append(b, fmt.Sprintf("%s %.2f s", s.name, s.dur.Seconds()))
	}
	return strings.Join(b, ", ")
}

// phaseOf names a log line of updatectl (`… level=INFO msg="pulling …"
// phase=pull`) by its phase and its message's first word: "pull/pulling".
// Other lines give "".
func phaseOf(line string) string {
	_, p, ok := strings.Cut(line, " phase=")
	if !ok || !strings.Contains(line, "level=") {
		return ""
	}
	p, _, _ = strings.Cut(p, " ")
	_, m, ok := strings.Cut(line, "msg=")
	if !ok {
		return ""
	}
	w, _, _ := strings.Cut(strings.TrimPrefix(m, `"`), " ")
	return p + "/" + w
}

// cutPlan is where one trial cuts the power.
type cutPlan struct {
	op    string        // "upgrade" or "finalize"
	seg   segment       // the segment aimed at, with its calibrated length
	delay time.Duration // into that segment
}

func (p cutPlan) String() string {
	return fmt.Sprintf("%s %s +%.2f of %.2f s", p.op, p.seg.name, p.delay.Seconds(), p.seg.dur.Seconds())
}

func (r *run) step5(ctx context.Context, o *outcome) {
	rnd := newRand(r.c.seed)
	prev, pending := "", ""
	var (
		outcomes []string
		upAims   aims
		finAims  aims
		inside   int // cuts that fell between their operation's marks
		cuts     int
		landed   = map[string]int{}
	)
	defer func() {
		for _, s := range outcomes {
			o.note("%s", s)
		}
		var l []string
		for _, k := range slices.Sorted(maps.Keys(landed)) {
			l = append(l, fmt.Sprintf("%s %d", k, landed[k]))
		}
		o.note("cuts landed in: %s", strings.Join(l, ", "))
		r.metrics = append(r.metrics, fmt.Sprintf("power cuts: %d cuts in %d trials (seed %d), %d inside the operation aimed at; landed in: %s",
			cuts, len(outcomes), r.c.seed, inside, strings.Join(l, ", ")))
	}()
	for i := 0; i <= r.c.cuts+1; i++ {
		if ctx.Err() != nil {
			o.fail("interrupted at trial %d", i)
			return
		}
		calibrate, last := i == 0, i == r.c.cuts+1
		script := cutCheckScript
		var plan cutPlan
		switch {
		case last:
			script += "finish\n"
		case calibrate || i%2 == 0:
			script += cutFinalizeScript
		default:
			script += cutUpgradeScript
		}
		if !last {
			if err := skopeoTag(ctx, r.c.port, fmt.Sprintf("cut-%02d", i), "stable"); err != nil {
				o.fail("%v", err)
				return
			}
		}
		if !calibrate && !last {
			// Trials 1, 3, 5… take the upgrade's segments in turn, 2, 4, 6…
			// the finalize's, each from a seeded first one.
			a, op := &upAims, "upgrade"
			if i%2 == 0 {
				a, op = &finAims, "finalize"
			}
			seg := a.take()
			plan = cutPlan{op: op, seg: seg, delay: time.Duration(rnd.Float64() * float64(seg.dur))}
		}
		up, fin := newTimeline("upgrade"), newTimeline("finalize")
		var kill func(string, time.Duration) bool
		if plan.op != "" {
			tl := up
			if plan.op == "finalize" {
				tl = fin
			}
			kill = func(line string, since time.Duration) bool {
				up.see(line, since)
				fin.see(line, since)
				if t, ok := tl.first[plan.seg.name]; ok && since >= t+plan.delay {
					return true
				}
				// The segment never came and the upgrade is over (its
				// driver would sleep): cut now, and say so.
				return plan.op == "upgrade" && up.t1 != 0
			}
		} else {
			kill = func(line string, since time.Duration) bool {
				up.see(line, since)
				fin.see(line, since)
				return false
			}
		}
		// A boot that does not reach the driver (a failed boot) is followed
		// by the next one: systemd-boot must get to a complete deployment.
		var res bootResult
		var err error
		bootsTried := 0
		for bootsTried < 4 {
			bootsTried++
			res, err = r.target.boot(ctx, bootOptions{Script: script, KillAt: kill})
			if err != nil || res.Up != 0 {
				break
			}
		}
		if err != nil {
			o.fail("trial %d: %v", i, err)
			return
		}
		if res.Up == 0 {
			o.fail("trial %d: no boot reached the driver in %d boots", i, bootsTried)
			return
		}
		// What the previous trial left.
		h, err := status(res, "status")
		if err != nil {
			o.fail("after trial %d: %v", i-1, err)
		} else {
			v := h.Status.Booted.version()
			if i > 0 && v != prev && v != pending {
				o.fail("after trial %d: booted version %q, neither %q (before) nor %q (the upgrade)", i-1, v, prev, pending)
			}
			if i > 0 {
				outcomes[len(outcomes)-1] += " → booted " + v
			}
			prev = v
		}
		if _, code := section(res.Output, "fsck"); code != 0 {
			o.fail("after trial %d: fsck exited %d", i-1, code)
		}
		if bootsTried > 1 {
			o.note("after trial %d: %d boots failed before one completed", i-1, bootsTried-1)
		}
		if last {
			break
		}
		pending = fmt.Sprintf("2.%02d", i)
		if out, code := section(res.Output, "upgrade"); code > 0 {
			o.fail("trial %d: upgrade exited %d: %s", i, code, lastLines(out, 3))
		}
		upAims.learn(up.completed())
		finAims.learn(fin.completed())
		if calibrate {
			if up.t1 == 0 || fin.t1 == 0 || len(upAims.segs) == 0 || len(finAims.segs) == 0 {
				o.fail("calibration: the upgrade (%v) or the finalize (%v) did not finish with its marks; console %s",
					up.t1 != 0, fin.t1 != 0, res.Console)
				return
			}
			outcomes = append(outcomes, fmt.Sprintf("trial 0, uncut: upgrade %.2f s (%s); finalize %.2f s (%s)",
				(up.t1-up.t0).Seconds(), up, (fin.t1-fin.t0).Seconds(), fin))
			upAims.next, finAims.next = rnd.IntN(len(upAims.segs)), rnd.IntN(len(finAims.segs))
			r.metrics = append(r.metrics, fmt.Sprintf("upgrade to a one-file-layer image (%s): %.2f s in the guest; its finalize at shutdown %.2f s",
				pending, (up.t1-up.t0).Seconds(), (fin.t1-fin.t0).Seconds()))
			continue
		}
		what := fmt.Sprintf("cut %d aimed at %s", i, plan)
		if res.Killed {
			cuts++
			tl := up
			if plan.op == "finalize" {
				tl = fin
			}
			where := tl.at(res.KilledAt)
			landed[plan.op+" "+where]++
			if where != "before" && where != "after" {
				inside++
			}
			what += fmt.Sprintf(": cut in %s, %.2f s after the %s began", where, (res.KilledAt - tl.t0).Seconds(), plan.op)
		} else {
			landed[plan.op+" not cut"]++
			what += ": the machine went down before the cut point"
		}
		outcomes = append(outcomes, what)
	}
	if cuts < r.c.cuts*3/4 || inside < r.c.cuts*3/4 {
		o.fail("only %d of %d trials cut the power, %d of them inside the operation aimed at (want 3/4 of %d)", cuts, r.c.cuts, inside, r.c.cuts)
	}
}
