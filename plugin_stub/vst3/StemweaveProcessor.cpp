// Stemweave VST3 (JUCE 7): the same stub as the LV2 build, for DAWs without LV2 (Ableton, FL Studio, Cubase).
// The audio thread only copies and swaps pointers; the server link (../common/sw_link.c) owns the socket on its
// own thread. The host's play head gives the timeline position, so captures and stems sit on the host timeline.
#include <juce_audio_processors/juce_audio_processors.h>

#include <atomic>
#include <cmath>
#include <vector>

extern "C" {
#include "../common/sw_link.h"
#include "../common/sw_state.h"
}

namespace
{
constexpr double maxCaptureSeconds = 120.0;
const juce::StringArray slotNames{"bass", "drums", "guitar", "piano"};
}  // namespace

class StemweaveProcessor final : public juce::AudioProcessor
{
public:
    StemweaveProcessor()
        : AudioProcessor(BusesProperties()
                             .withInput("Input", juce::AudioChannelSet::stereo(), true)
                             .withOutput("Output", juce::AudioChannelSet::stereo(), true))
    {
        addParameter(capture = new juce::AudioParameterBool({"capture", 1}, "Capture", false));
        addParameter(markStart = new juce::AudioParameterFloat({"mark_start", 1}, "Region start (s)", 0.0f, 36000.0f, 0.0f));
        addParameter(markEnd = new juce::AudioParameterFloat({"mark_end", 1}, "Region end (s)", 0.0f, 36000.0f, 0.0f));
        addParameter(separate = new juce::AudioParameterBool({"separate", 1}, "Separate", false));
        addParameter(accompany = new juce::AudioParameterBool({"accompany", 1}, "Accompany", false));
        addParameter(cancel = new juce::AudioParameterBool({"cancel", 1}, "Cancel", false));
        addParameter(captureAs = new juce::AudioParameterChoice({"capture_as", 1}, "Capture is stem", slotNames, 1));
        addParameter(target = new juce::AudioParameterChoice({"target", 1}, "Generate stem", slotNames, 0));
        addParameter(solo = new juce::AudioParameterChoice({"solo", 1}, "Play stem",
                                                           juce::StringArray{"all", "bass", "drums", "guitar", "piano"}, 0));
        addParameter(dry = new juce::AudioParameterFloat({"dry", 1}, "Dry in region", 0.0f, 2.0f, 0.0f));
        for (int s = 0; s < SW_SLOTS; ++s)
            addParameter(gains[s] = new juce::AudioParameterFloat({juce::String("gain_") + slotNames[s], 1},
                                                                  slotNames[s] + " gain", 0.0f, 2.0f, 1.0f));
        addParameter(loop = new juce::AudioParameterBool({"loop", 1}, "Loop result", false));
        link = sw_link_new(nullptr, "stemweave-vst3");
    }

    ~StemweaveProcessor() override
    {
        sw_link_free(link);  // joins the link thread: nothing reads the capture buffers after this
        sw_stems_free(stems);
        sw_stems_free(restored.exchange(nullptr));
    }

    const juce::String getName() const override { return "Stemweave"; }
    bool acceptsMidi() const override { return false; }
    bool producesMidi() const override { return false; }
    double getTailLengthSeconds() const override { return 0.0; }
    int getNumPrograms() override { return 1; }
    int getCurrentProgram() override { return 0; }
    void setCurrentProgram(int) override {}
    const juce::String getProgramName(int) override { return {}; }
    void changeProgramName(int, const juce::String&) override {}
    bool hasEditor() const override { return true; }
    juce::AudioProcessorEditor* createEditor() override { return new juce::GenericAudioProcessorEditor(*this); }

    bool isBusesLayoutSupported(const BusesLayout& layouts) const override
    {
        const auto& out = layouts.getMainOutputChannelSet();
        return (out == juce::AudioChannelSet::stereo() || out == juce::AudioChannelSet::mono()) &&
               layouts.getMainInputChannelSet() == out;
    }

    void prepareToPlay(double sampleRate, int) override
    {
        rate = sampleRate;
        const auto frames = (size_t)(maxCaptureSeconds * sampleRate);
        for (auto& buffer : buffers)
            for (auto& channel : buffer.data)
                if (channel.size() != frames) channel.assign(frames, 0.0f);  // not on the audio thread
        ownFrame = 0;
        setLatencySamples(0);  // audio is never delayed: stems are placed on the timeline
    }

    void releaseResources() override {}

    /// What the status would show (idle 0, capturing 1, working 2, ready 3, error 4, server offline 5).
    int status() const
    {
        if (capturing) return SW_STATE_CAPTURING;
        if (!link) return SW_STATE_OFFLINE;
        const auto state = sw_link_state(link);
        if (state == SW_STATE_WORKING || state == SW_STATE_OFFLINE) return state;
        if (!sw_link_online(link)) return SW_STATE_OFFLINE;
        if (state == SW_STATE_ERROR) return state;
        return stems ? SW_STATE_READY : SW_STATE_IDLE;
    }

    void processBlock(juce::AudioBuffer<float>& audio, juce::MidiBuffer&) override
    {
        juce::ScopedNoDenormals noDenormals;
        if (auto* fresh = restored.exchange(nullptr)) swapIn(fresh);
        if (link)
            if (auto* fresh = sw_link_take_result(link)) swapIn(fresh);

        // the host timeline: the play head when the host has one, else our own frame count
        int64_t frame = ownFrame;
        bool rolling = true;
        if (auto* head = getPlayHead())
            if (auto position = head->getPosition())
            {
                if (auto samples = position->getTimeInSamples()) frame = *samples;
                rolling = position->getIsPlaying();
            }
        if (!rolling && isNonRealtime())
        {
            // An offline host whose transport does not run (pedalboard, command-line renderers) processes a file
            // start to end: our own frame count is its timeline.
            frame = ownFrame;
            rolling = true;
        }
        readControls();

        const int n = audio.getNumSamples();
        const int channels = audio.getNumChannels();
        float* left = audio.getWritePointer(0);
        float* right = channels > 1 ? audio.getWritePointer(1) : left;
        const double ms = *markStart, me = *markEnd;
        const bool marks = me > ms;
        const auto markFirst = (int64_t)std::llround(ms * rate), markLast = (int64_t)std::llround(me * rate);
        const auto maxFrames = (int64_t)buffers[0].data[0].size();
        if (frame != expected && capturing && !marks) captureDone();  // relocated
        for (int i = 0; i < n; ++i)
        {
            const int64_t f = frame + i;
            const float l = left[i], r = right[i];
            if (rolling && armed && maxFrames > 0)
            {
                if (marks)
                {
                    // each sample at its frame's place in the span: skipped frames stay silent, never shift
                    if (capturing && f >= markLast) captureDone();
                    if (!capturing && f >= markFirst && f < markLast) startCapture(markFirst, markLast - markFirst);
                    if (capturing && f >= markFirst && f < markLast)
                    {
                        const int64_t k = f - markFirst;
                        if (k < maxFrames)
                        {
                            for (auto& channel : buffers[current].data)
                                if (k > capLen) std::fill(channel.begin() + capLen, channel.begin() + k, 0.0f);
                            write(k, l, r);
                            if (k >= capLen) capLen = k + 1;
                        }
                        if (k + 1 == capWant || k + 1 >= maxFrames) captureDone();
                    }
                }
                else
                {
                    if (!capturing) startCapture(f, 0);
                    if (capturing)
                    {
                        write(capLen, l, r);
                        if (++capLen >= maxFrames) captureDone();
                    }
                }
            }
            float outL = l, outR = r;
            if (stems && rolling)
            {
                int64_t k = f - stems->position;
                if (*loop && k >= 0) k %= stems->frames;
                if (k >= 0 && k < stems->frames)
                {
                    const float base = stems->task == SW_TASK_ACCOMPANY ? 1.0f : dry->get();
                    outL = base * l;
                    outR = base * r;
                    const auto len = (size_t)stems->frames;
                    for (int s = 0; s < stems->n_stems; ++s)
                    {
                        const float g = stemGain(s);
                        if (g == 0.0f) continue;
                        const float* stem = stems->data + (size_t)s * (size_t)stems->channels * len;
                        outL += g * stem[k];
                        outR += g * stem[(stems->channels > 1 ? len : 0) + (size_t)k];
                    }
                }
            }
            left[i] = outL;
            if (channels > 1) right[i] = outR;
        }
        expected = rolling ? frame + n : frame;
        if (rolling) ownFrame = frame + n;
    }

    void getStateInformation(juce::MemoryBlock& dest) override
    {
        const SwStems* st = stems;  // retired stems are freed by the link only after a grace period
        if (!st) return;
        dest.setSize(sw_state_size(st));
        sw_state_to_memory(st, dest.getData(), dest.getSize());
    }

    void setStateInformation(const void* data, int size) override
    {
        if (auto* st = sw_state_from_memory(data, (size_t)size)) sw_stems_free(restored.exchange(st));
    }

private:
    struct CaptureBuffer
    {
        std::vector<float> data[2];
        uint64_t seq = 0;
    };

    void swapIn(SwStems* fresh)
    {
        sw_link_retire(link, stems);
        stems = fresh;
    }

    bool bufferFree(int b) const
    {
        return !buffers[b].seq || !link || sw_link_audio_released(link, buffers[b].seq);
    }

    void startCapture(int64_t start, int64_t want)
    {
        int b = complete || buffers[current].seq ? 1 - current : current;
        if (!bufferFree(b)) b = 1 - b;
        if (!bufferFree(b)) return;
        current = b;
        buffers[b].seq = 0;
        capturing = true;
        complete = false;
        mono = true;
        capStart = start;
        capLen = 0;
        capWant = want;
    }

    void write(int64_t k, float l, float r)
    {
        buffers[current].data[0][(size_t)k] = l;
        buffers[current].data[1][(size_t)k] = r;
        mono = mono && l == r;
    }

    void captureDone()
    {
        capturing = false;
        armed = false;
        complete = capLen > 0;
        if (complete && pending >= 0) submit((SwTask)pending);
    }

    void submit(SwTask task)
    {
        if (!link || capLen < 1) return;
        auto& buffer = buffers[current];
        SwRequest r{};
        r.task = task;
        r.rate = (int)std::lround(rate);
        r.channels = mono ? 1 : 2;
        r.frames = capLen;
        r.position = capStart;
        r.seed = 0;
        r.given_slot = captureAs->getIndex();
        r.target_slot = target->getIndex();
        r.audio[0] = buffer.data[0].data();
        r.audio[1] = buffer.data[1].data();
        const uint64_t seq = sw_link_submit(link, &r);
        if (!seq) return;
        buffer.seq = seq;
        pending = -1;
        if (isNonRealtime())  // offline bounce: no deadline, so wait for the stems to keep the render exact
        {
            sw_link_wait(link, seq, 3600.0);
            if (auto* fresh = sw_link_take_result(link)) swapIn(fresh);
        }
    }

    void readControls()
    {
        const bool on = *capture;
        const bool marksChanged = markStart->get() != lastMarkStart || markEnd->get() != lastMarkEnd;
        if (on && (!lastCapture || marksChanged))
        {
            if (capturing) captureDone();
            armed = true;
        }
        if (!on && lastCapture)
        {
            if (capturing) captureDone();
            armed = false;
        }
        lastCapture = on;
        lastMarkStart = markStart->get();
        lastMarkEnd = markEnd->get();
        if (*cancel && !lastCancel)
        {
            pending = -1;
            if (link) sw_link_cancel(link);
        }
        int task = -1;
        if (*separate && !lastSeparate) task = SW_TASK_SEPARATE;
        if (*accompany && !lastAccompany) task = SW_TASK_ACCOMPANY;
        lastSeparate = *separate;
        lastAccompany = *accompany;
        lastCancel = *cancel;
        if (task >= 0)
        {
            if (complete && !capturing && !armed)
                submit((SwTask)task);
            else
                pending = task;
        }
    }

    float stemGain(int i) const
    {
        const int slot = stems->slot_of[i];
        if (slot < 0) return 0.0f;
        if (stems->task == SW_TASK_ACCOMPANY && slot == stems->given_slot) return 0.0f;
        const int only = solo->getIndex();
        if (only > 0 && only - 1 != slot) return 0.0f;
        return gains[slot]->get();
    }

    juce::AudioParameterBool *capture, *separate, *accompany, *cancel, *loop;
    juce::AudioParameterFloat *markStart, *markEnd, *dry, *gains[SW_SLOTS];
    juce::AudioParameterChoice *captureAs, *target, *solo;

    SwLink* link = nullptr;
    SwStems* stems = nullptr;
    std::atomic<SwStems*> restored{nullptr};
    double rate = 44100.0;
    int64_t ownFrame = 0, expected = 0;
    CaptureBuffer buffers[2];
    int current = 0;
    bool capturing = false, armed = false, complete = false, mono = true;
    int64_t capStart = 0, capLen = 0, capWant = 0;
    bool lastCapture = false, lastSeparate = false, lastAccompany = false, lastCancel = false;
    float lastMarkStart = 0.0f, lastMarkEnd = 0.0f;
    int pending = -1;

    JUCE_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(StemweaveProcessor)
};

juce::AudioProcessor* JUCE_CALLTYPE createPluginFilter() { return new StemweaveProcessor(); }
