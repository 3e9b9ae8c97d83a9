package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// prog prefixes every log line, on the console and in the kernel log.
const prog = "twinroot-setup-root"

// newLogger returns a logger that writes one text line per record to each
// of outs. The record's time is replaced by t=<ms since start> (monotonic),
// which the setup-root benchmark reads. A sink whose kmsg flag is set gets
// the kernel log's "<priority>" prefix (/dev/kmsg takes one record per
// write).
func newLogger(start time.Time, level slog.Level, outs ...sink) *slog.Logger {
	hs := make([]*lineHandler, 0, len(outs))
	for _, o := range outs {
		buf := new(bytes.Buffer)
		hs = append(hs, &lineHandler{
			mu:   new(sync.Mutex),
			out:  o,
			buf:  buf,
			text: slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level, ReplaceAttr: elapsedAttr(start)}),
		})
	}
	return slog.New(fanout(hs))
}

// sink is one destination of log lines.
type sink struct {
	w    io.Writer
	kmsg bool // prefix lines with the syslog priority, as /dev/kmsg wants
}

// elapsedAttr replaces the record time by milliseconds since start.
func elapsedAttr(start time.Time) func([]string, slog.Attr) slog.Attr {
	return func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			t := a.Value.Time()
			return slog.String("t", fmt.Sprintf("%.3fms", float64(t.Sub(start).Microseconds())/1000))
		}
		return a
	}
}

// ms formats a duration as milliseconds for log attributes.
func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }

// lineHandler formats a record with a TextHandler into a buffer and
// writes it, with the prefix, in one Write.
type lineHandler struct {
	mu   *sync.Mutex
	out  sink
	buf  *bytes.Buffer
	text slog.Handler
}

func (h *lineHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.text.Enabled(ctx, l)
}

func (h *lineHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	var line bytes.Buffer
	if h.out.kmsg {
		fmt.Fprintf(&line, "<%d>", syslogPriority(r.Level))
	}
	line.WriteString(prog + ": ")
	if err := h.text.Handle(ctx, r); err != nil {
		return err
	}
	line.Write(h.buf.Bytes())
	_, err := h.out.w.Write(line.Bytes())
	return err
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &lineHandler{mu: h.mu, out: h.out, buf: h.buf, text: h.text.WithAttrs(as)}
}

func (h *lineHandler) WithGroup(name string) slog.Handler {
	return &lineHandler{mu: h.mu, out: h.out, buf: h.buf, text: h.text.WithGroup(name)}
}

// syslogPriority maps a level to a syslog severity; /dev/kmsg records a
// bare "<N>" from userspace under the user facility.
func syslogPriority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}

// fanout sends every record to each handler; the first error is returned.
type fanout []*lineHandler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range f {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var first error
	for _, h := range f {
		if !h.Enabled(ctx, r.Level) {
			continue
		}
		if err := h.Handle(ctx, r.Clone()); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (f fanout) WithAttrs(as []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(as).(*lineHandler)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name).(*lineHandler)
	}
	return out
}
