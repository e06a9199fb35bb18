//! The host link to the PN532: SPI or I2C (UM0701-02 §6.2.5, §6.2.4).
//!
//! The driver only needs three things from a link: send a whole frame, ask whether the chip
//! has a frame ready, and read bytes of that frame. [`Interface`] is exactly that, so a UART
//! link or an IRQ-pin variant can be added without touching the driver.

use embedded_hal::i2c::I2c;
use embedded_hal::spi::{Operation, SpiDevice};

/// A host link to the PN532.
pub trait Interface {
    /// The bus error.
    type Error;

    /// Bytes the link puts before the frame on every read (the I2C ready byte). The driver
    /// sizes its reads with this and looks for the frame behind it.
    const READ_PREFIX: usize;

    /// Sends one complete frame. The link may rewrite `frame` in place (bit reversal for an
    /// MSB-first SPI bus); the driver does not reuse it afterwards.
    fn write(&mut self, frame: &mut [u8]) -> Result<(), Self::Error>;

    /// Asks whether the PN532 has a frame ready for the host.
    fn ready(&mut self) -> Result<bool, Self::Error>;

    /// Reads `buf.len()` bytes: [`Interface::READ_PREFIX`] bytes of the link, then the frame.
    /// Returns `false` when the link says the chip was not ready after all (I2C ready byte clear);
    /// the bytes are then meaningless.
    fn read(&mut self, buf: &mut [u8]) -> Result<bool, Self::Error>;
}

impl<T: Interface + ?Sized> Interface for &mut T {
    type Error = T::Error;
    const READ_PREFIX: usize = T::READ_PREFIX;
    fn write(&mut self, frame: &mut [u8]) -> Result<(), Self::Error> {
        (**self).write(frame)
    }
    fn ready(&mut self) -> Result<bool, Self::Error> {
        (**self).ready()
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<bool, Self::Error> {
        (**self).read(buf)
    }
}

/// SPI operation byte: data write (§6.2.5).
pub const SPI_DATA_WRITE: u8 = 0x01;
/// SPI operation byte: status read (§6.2.5).
pub const SPI_STATUS_READ: u8 = 0x02;
/// SPI operation byte: data read (§6.2.5).
pub const SPI_DATA_READ: u8 = 0x03;
/// Bit 0 of the status byte: a frame is ready.
pub const READY: u8 = 0x01;

/// How the SPI peripheral shifts bits.
///
/// The PN532 shifts LSB first (§6.2.5), but embedded-hal 1.0 has no bit-order setting: it is part
/// of the peripheral's configuration in each HAL, and some peripherals (or bit-banged buses) can
/// only do MSB first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOrder {
    /// The bus was configured LSB first: bytes go out as they are.
    LsbFirst,
    /// The bus is MSB first: the interface reverses the bits of every byte in software, both ways
    /// (`u8::reverse_bits`, a single `RBIT`-class operation per byte on Cortex-M).
    MsbFirst,
}

/// The PN532 on an SPI bus (mode 0, at most 5 MHz). Chip select is the [`SpiDevice`]'s job.
///
/// Every access is one transaction: the operation byte (DW, SR or DR) followed by the frame,
/// the status byte or the read bytes.
#[derive(Debug)]
pub struct SpiInterface<SPI> {
    spi: SPI,
    order: BitOrder,
}

impl<SPI: SpiDevice> SpiInterface<SPI> {
    /// Wraps an SPI device configured for mode 0, shifting bits in `order`.
    pub fn new(spi: SPI, order: BitOrder) -> Self {
        Self { spi, order }
    }

    /// Gives the SPI device back.
    pub fn release(self) -> SPI {
        self.spi
    }

    fn wire(&self, byte: u8) -> u8 {
        match self.order {
            BitOrder::LsbFirst => byte,
            BitOrder::MsbFirst => byte.reverse_bits(),
        }
    }

    fn wire_all(&self, bytes: &mut [u8]) {
        if self.order == BitOrder::MsbFirst {
            bytes.iter_mut().for_each(|b| *b = b.reverse_bits());
        }
    }
}

impl<SPI: SpiDevice> Interface for SpiInterface<SPI> {
    type Error = SPI::Error;
    const READ_PREFIX: usize = 0;

    fn write(&mut self, frame: &mut [u8]) -> Result<(), Self::Error> {
        let op = [self.wire(SPI_DATA_WRITE)];
        self.wire_all(frame);
        self.spi
            .transaction(&mut [Operation::Write(&op), Operation::Write(frame)])
    }

    fn ready(&mut self) -> Result<bool, Self::Error> {
        let op = [self.wire(SPI_STATUS_READ)];
        let mut status = [0u8];
        self.spi
            .transaction(&mut [Operation::Write(&op), Operation::Read(&mut status)])?;
        Ok(self.wire(status[0]) & READY != 0)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<bool, Self::Error> {
        let op = [self.wire(SPI_DATA_READ)];
        self.spi
            .transaction(&mut [Operation::Write(&op), Operation::Read(buf)])?;
        self.wire_all(buf);
        Ok(true)
    }
}

/// 7-bit I2C address of the PN532 (0x48 write / 0x49 read, §6.2.4).
pub const I2C_ADDRESS: u8 = 0x24;

/// The PN532 on an I2C bus (at most 400 kHz).
///
/// Every read from the PN532 starts with its ready byte (§6.2.4); the driver reads the ready
/// byte alone to poll, then reads ready byte and frame in one transfer.
#[derive(Debug)]
pub struct I2cInterface<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> I2cInterface<I2C> {
    /// Wraps an I2C bus with the PN532 at its fixed address [`I2C_ADDRESS`].
    pub fn new(i2c: I2C) -> Self {
        Self {
            i2c,
            address: I2C_ADDRESS,
        }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

impl<I2C: I2c> Interface for I2cInterface<I2C> {
    type Error = I2C::Error;
    const READ_PREFIX: usize = 1;

    fn write(&mut self, frame: &mut [u8]) -> Result<(), Self::Error> {
        self.i2c.write(self.address, frame)
    }

    fn ready(&mut self) -> Result<bool, Self::Error> {
        let mut status = [0u8];
        self.i2c.read(self.address, &mut status)?;
        Ok(status[0] & READY != 0)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<bool, Self::Error> {
        self.i2c.read(self.address, buf)?;
        Ok(buf.first().is_some_and(|s| s & READY != 0))
    }
}
