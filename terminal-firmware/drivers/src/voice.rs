//! The voice-prompt module.
//!
//! A terminal says every outcome aloud (DESIGN: "every outcome a person sees must also be
//! heard"). The recordings live on the module (an SD card or SPI flash), one folder per
//! language, one file per [`PromptId::code`]; the firmware only sends "play folder F, file T".
//!
//! [`DfPlayer`] speaks the serial protocol of the common DFPlayer-style MP3 modules (9600 baud
//! 8N1): ten-byte commands `7E FF 06 CMD 00 P_hi P_lo C_hi C_lo EF`, where the checksum is the
//! two's complement of the 16-bit sum of `FF 06 CMD 00 P_hi P_lo`. The firmware does not ask for
//! acknowledgements (feedback byte 00): the UART is transmit-only and a missing module must not
//! stall a tap.

use embedded_io::{Error as _, ErrorKind, Write};
use terminal_core::{Lang, PromptId};

/// Plays a voice prompt (non-blocking: the module speaks while the terminal goes on).
pub trait VoicePlayer {
    /// Starts prompt `prompt` in `lang`.
    fn play(&mut self, prompt: PromptId, lang: Lang) -> Result<(), ErrorKind>;
}

impl<V: VoicePlayer + ?Sized> VoicePlayer for &mut V {
    fn play(&mut self, prompt: PromptId, lang: Lang) -> Result<(), ErrorKind> {
        (**self).play(prompt, lang)
    }
}

/// No voice module fitted (a desk terminal with a screen and a loudspeaker driven elsewhere).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoVoice;

impl VoicePlayer for NoVoice {
    fn play(&mut self, _prompt: PromptId, _lang: Lang) -> Result<(), ErrorKind> {
        Ok(())
    }
}

/// Command: play file `P_lo` of folder `P_hi`.
pub const CMD_PLAY_FOLDER_FILE: u8 = 0x0F;
/// Command: set the volume (0..=30).
pub const CMD_SET_VOLUME: u8 = 0x06;
/// Highest volume the module accepts.
pub const MAX_VOLUME: u8 = 30;

/// The folder holding the recordings of `lang` (`01/` Chinese, `02/` English).
pub const fn folder_of(lang: Lang) -> u8 {
    match lang {
        Lang::ZhCn => 1,
        Lang::En => 2,
    }
}

/// One ten-byte command frame.
pub fn command_frame(cmd: u8, param: u16) -> [u8; 10] {
    let [hi, lo] = param.to_be_bytes();
    let body = [0xFF, 0x06, cmd, 0x00, hi, lo];
    let sum = body.iter().fold(0u16, |a, b| a.wrapping_add(u16::from(*b)));
    let [c_hi, c_lo] = sum.wrapping_neg().to_be_bytes();
    [0x7E, 0xFF, 0x06, cmd, 0x00, hi, lo, c_hi, c_lo, 0xEF]
}

/// A DFPlayer-style module on a UART.
#[derive(Debug)]
pub struct DfPlayer<W> {
    uart: W,
}

impl<W: Write> DfPlayer<W> {
    /// A module on `uart` (9600 baud 8N1).
    pub fn new(uart: W) -> Self {
        Self { uart }
    }

    /// Gives the UART back.
    pub fn release(self) -> W {
        self.uart
    }

    /// Sets the volume; values above [`MAX_VOLUME`] are refused, not clipped (a configuration
    /// mistake should show).
    pub fn set_volume(&mut self, volume: u8) -> Result<(), ErrorKind> {
        if volume > MAX_VOLUME {
            return Err(ErrorKind::InvalidInput);
        }
        self.send(CMD_SET_VOLUME, u16::from(volume))
    }

    /// Plays file `file` (1..=255) of folder `folder` (1..=99).
    pub fn play_folder_file(&mut self, folder: u8, file: u8) -> Result<(), ErrorKind> {
        if !(1..=99).contains(&folder) || file == 0 {
            return Err(ErrorKind::InvalidInput);
        }
        self.send(CMD_PLAY_FOLDER_FILE, u16::from_be_bytes([folder, file]))
    }

    fn send(&mut self, cmd: u8, param: u16) -> Result<(), ErrorKind> {
        let frame = command_frame(cmd, param);
        // Our own loop rather than `write_all`, which panics on a zero-length write: a UART that
        // stops taking bytes is a fault to report, not a reason to halt the terminal.
        let mut rest = &frame[..];
        while !rest.is_empty() {
            match self.uart.write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero),
                Ok(n) => rest = rest.get(n..).unwrap_or(&[]),
                Err(e) => return Err(e.kind()),
            }
        }
        self.uart.flush().map_err(|e| e.kind())
    }
}

impl<W: Write> VoicePlayer for DfPlayer<W> {
    fn play(&mut self, prompt: PromptId, lang: Lang) -> Result<(), ErrorKind> {
        self.play_folder_file(folder_of(lang), prompt.code())
    }
}
